package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// checkYAML walks a YAML document against the type it is decoded into and
// names the first unknown or repeated field by its YAML path and line, as the
// kubelet's strict decoding refuses them ("policy.requireEnforcement: unknown
// field"). Values are judged later by the decoder; typeError words its
// errors the same way.
func checkYAML(data []byte, t reflect.Type) (*yamlv3.Node, error) {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], walkYAML(doc.Content[0], t, "")
}

func walkYAML(n *yamlv3.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yamlv3.AliasNode {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return nil
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) && t.Kind() != reflect.Struct {
		return nil // its own decoder judges it
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Uint32:
		if n.Kind == yamlv3.MappingNode || n.Kind == yamlv3.SequenceNode {
			return fmt.Errorf("line %d: %s: is a %s, want %s", n.Line, pathOr(path), kindOf(n), goWord(t))
		}
	case reflect.Struct:
		if n.Kind != yamlv3.MappingNode {
			return fmt.Errorf("line %d: %s: is a %s, want a mapping of fields", n.Line, pathOr(path), kindOf(n))
		}
		fields := jsonFields(t)
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				return fmt.Errorf("line %d: %s: repeated field (first on line %d)", k.Line, p, line)
			}
			seen[k.Value] = k.Line
			f, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("line %d: %s: unknown field", k.Line, p)
			}
			if err := walkYAML(v, f, p); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yamlv3.MappingNode {
			return nil // the decoder words it
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := join(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				return fmt.Errorf("line %d: %s: repeated key (first on line %d)", k.Line, p, line)
			}
			seen[k.Value] = k.Line
			if err := walkYAML(n.Content[i+1], t.Elem(), p); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yamlv3.SequenceNode {
			return nil
		}
		for i, e := range n.Content {
			if err := walkYAML(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields maps a struct's JSON names to their types, embedded structs'
// fields included.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" {
			for k, v := range jsonFields(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

// typeError rewords a decoder's type mismatch in YAML terms, with the line
// of the value when the document has it.
func typeError(err error, root *yamlv3.Node) error {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Field == "" {
		return err
	}
	msg := fmt.Sprintf("%s: is a %s, want %s", te.Field, yamlWord(te.Value), goWord(te.Type))
	if te.Type == reflect.TypeFor[Duration]() || te.Type == reflect.TypeFor[PolicyMode]() {
		msg = te.Field + ": " + te.Value // their decoders word the value
	}
	if n := lookup(root, te.Field); n != nil {
		msg = fmt.Sprintf("line %d: %s", n.Line, msg)
	}
	return errors.New(msg)
}

// lookup finds the value node at a dotted path of mapping keys.
func lookup(n *yamlv3.Node, path string) *yamlv3.Node {
	for _, key := range strings.Split(path, ".") {
		if n == nil || n.Kind != yamlv3.MappingNode {
			return nil
		}
		var next *yamlv3.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return n
}

func yamlWord(jsonKind string) string {
	switch {
	case jsonKind == "number" || strings.HasPrefix(jsonKind, "number "):
		return "number"
	case jsonKind == "bool":
		return "boolean"
	case jsonKind == "array":
		return "list"
	case jsonKind == "object":
		return "mapping"
	}
	return jsonKind
}

func goWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Bool:
		return "a boolean (true or false)"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	case reflect.Pointer:
		return goWord(t.Elem())
	}
	return t.String()
}

func kindOf(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.SequenceNode:
		return "list"
	case yamlv3.MappingNode:
		return "mapping"
	}
	switch n.Tag {
	case "!!int", "!!float":
		return "number"
	case "!!bool":
		return "boolean"
	}
	return "string"
}

func join(path, key string) string {
	if strings.ContainsAny(key, ".[] ") || key == "" {
		key = "[" + strconv.Quote(key) + "]"
		return path + key
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func pathOr(p string) string {
	if p == "" {
		return "(document)"
	}
	return p
}
