package libvirtimport

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/ftvmd/ftvmd/vmspec"
)

// ConvertXML parses a domain's XML and converts it (Convert). libvirtxml drops
// what its schema does not know (elements and attributes of a libvirt newer than
// it), so those are found by comparing the document with the parsed domain written
// back, and reported as problems too: nothing in the domain goes unchecked. The
// error is for XML that does not parse.
func ConvertXML(doc string) (vmspec.Spec, []Problem, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return vmspec.Spec{}, nil, fmt.Errorf("parse domain XML: %w", err)
	}
	s, problems := Convert(&d)
	back, err := d.Marshal()
	if err != nil {
		return vmspec.Spec{}, nil, fmt.Errorf("domain XML: write back: %w", err)
	}
	unknown, err := dropped(doc, back)
	if err != nil {
		return vmspec.Spec{}, nil, err
	}
	for _, u := range unknown {
		problems = append(problems, Problem{Element: u, Reason: "not known to ftvmd's libvirt schema (libvirtxml): ftvmd cannot tell what it asks for"})
	}
	return s, problems, nil
}

// dropped lists the elements and attributes of doc that are not in back, in
// document order, as "<domain><devices><newdevice>" or
// "<domain><devices><interface foo='bar'>". An unknown element is listed once, not
// also each attribute and child in it. <metadata> is skipped: it is applications'
// own XML, which libvirt keeps as it is.
func dropped(doc, back string) ([]string, error) {
	have, err := xmlPaths(back)
	if err != nil {
		return nil, fmt.Errorf("domain XML: read back: %w", err)
	}
	want, err := xmlPaths(doc)
	if err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	known := map[string]bool{}
	for _, p := range have {
		known[p.key] = true
	}
	var out []string
	last := ""
	for _, p := range want {
		if known[p.key] || (last != "" && strings.HasPrefix(p.key, last)) {
			continue
		}
		last = p.key
		out = append(out, p.show)
	}
	return out, nil
}

// xmlPath is an element or attribute of a document: key is its path without
// values ("<domain><devices><disk>", "<domain><devices><disk>@type"), show how a
// problem names it ("<domain><devices><disk type='file'>").
type xmlPath struct{ key, show string }

// xmlPaths lists the element and attribute paths in doc, outside <metadata>, in
// document order, each once.
func xmlPaths(doc string) ([]xmlPath, error) {
	var out []xmlPath
	seen := map[string]bool{}
	add := func(key, show string) {
		if !seen[key] {
			seen[key] = true
			out = append(out, xmlPath{key, show})
		}
	}
	dec := xml.NewDecoder(strings.NewReader(doc))
	var stack []string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(stack) == 1 && t.Name.Local == "metadata" {
				if err := dec.Skip(); err != nil {
					return nil, err
				}
				continue
			}
			stack = append(stack, "<"+qname(t.Name)+">")
			p := strings.Join(stack, "")
			add(p, p)
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || a.Name.Local == "xmlns" {
					continue
				}
				add(p+"@"+qname(a.Name), strings.TrimSuffix(p, ">")+" "+qname(a.Name)+"='"+a.Value+"'>")
			}
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
}

// qname names an element or attribute with the last segment of its namespace's
// path as prefix (qemu:commandline), as the domain XML conventionally writes it.
func qname(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	parts := strings.Split(strings.TrimSuffix(n.Space, "/"), "/")
	if len(parts) >= 2 {
		return parts[len(parts)-2] + ":" + n.Local
	}
	return n.Space + ":" + n.Local
}
