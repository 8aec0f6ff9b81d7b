package libvirtimport

import (
	"fmt"
	"reflect"
	"strings"
)

// field is one XML element or attribute a libvirtxml struct holds.
type field struct {
	name string // as in the XML: "vcpu", "machine", "qemu:commandline"
	attr bool
	v    reflect.Value
}

// String renders the field as it appears in the domain XML: <name> or name='value'.
func (f field) String() string {
	if f.attr {
		return fmt.Sprintf("%s='%v'", f.name, reflect.Indirect(f.v).Interface())
	}
	return "<" + f.name + ">"
}

// present lists the fields of the libvirtxml struct v (or pointer to one) that the
// XML set, in declaration order (libvirtxml declares them in the schema's order).
// Every element the schema knows is a field, so a conversion that handles the
// fields it knows and reports the rest refuses what it has not been taught,
// including what a newer libvirtxml adds. Skipped: XMLName, character data, and
// the union fields libvirtxml fills from a type attribute (tagged "-"), which the
// caller reads itself (see union).
func present(v any) []field {
	rv := reflect.Indirect(reflect.ValueOf(v))
	if !rv.IsValid() || rv.Kind() != reflect.Struct {
		return nil
	}
	rt := rv.Type()
	var out []field
	for i := range rt.NumField() {
		sf := rt.Field(i)
		fv := rv.Field(i)
		if !sf.IsExported() || sf.Name == "XMLName" || fv.IsZero() {
			continue
		}
		tag, ok := sf.Tag.Lookup("xml")
		name, opts, _ := strings.Cut(tag, ",")
		if tag == "-" || hasOpt(opts, "chardata") || hasOpt(opts, "innerxml") || hasOpt(opts, "any") {
			continue
		}
		if !ok || name == "" {
			name = namespacedName(sf)
		}
		out = append(out, field{name: name, attr: hasOpt(opts, "attr"), v: fv})
	}
	return out
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// namespacedName names a field without an xml tag: libvirtxml's hypervisor
// namespace elements (<qemu:commandline>), whose type carries the namespace in
// its XMLName tag ("http://libvirt.org/schemas/domain/qemu/1.0 commandline").
func namespacedName(sf reflect.StructField) string {
	t := sf.Type
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		if xn, ok := t.FieldByName("XMLName"); ok {
			ns, local, found := strings.Cut(xn.Tag.Get("xml"), " ")
			if found {
				parts := strings.Split(strings.TrimSuffix(ns, "/"), "/")
				prefix := ""
				if len(parts) >= 2 {
					prefix = parts[len(parts)-2] + ":" // .../domain/qemu/1.0 -> qemu:
				}
				return prefix + local
			}
		}
	}
	return sf.Name
}

// union names the variant libvirtxml chose for a union struct (a disk's source, an
// interface's source, a hostdev): the first set field tagged "-", lower-cased and
// without the Subsys/Caps prefix, which matches the type attribute in the XML
// (File -> "file", SubsysPCI -> "pci", VHostUser -> "vhostuser"). "" if none.
func union(v any) string {
	rv := reflect.Indirect(reflect.ValueOf(v))
	if !rv.IsValid() || rv.Kind() != reflect.Struct {
		return ""
	}
	rt := rv.Type()
	for i := range rt.NumField() {
		sf := rt.Field(i)
		if sf.Tag.Get("xml") == "-" && sf.Type.Kind() == reflect.Pointer && !rv.Field(i).IsNil() {
			n := strings.TrimPrefix(strings.TrimPrefix(sf.Name, "Subsys"), "Caps")
			return strings.ToLower(n)
		}
	}
	return ""
}
