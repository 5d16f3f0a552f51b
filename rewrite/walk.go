package rewrite

import "google.golang.org/protobuf/reflect/protoreflect"

// walkTree calls visit for m and, depth first in field order, for every
// message below it; where visit returns false, m's children are skipped.
func walkTree(m protoreflect.Message, visit func(protoreflect.Message) bool) {
	if !visit(m) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkTree(l.Get(i).Message(), visit)
			}
			return true
		}
		walkTree(v.Message(), visit)
		return true
	})
}
