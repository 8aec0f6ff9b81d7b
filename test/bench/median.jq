# median: the middle of an array of numbers (the mean of the two middle ones when
# the length is even). Shared by the bench scripts: jq -L test/bench 'include "median"; ...'
def median: sort as $v | ($v | length) as $n
  | if $n % 2 == 1 then $v[$n / 2 | floor] else ($v[$n / 2 - 1] + $v[$n / 2]) / 2 end;
