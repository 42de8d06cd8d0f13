package shim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"
)

// The alert rules and the dashboard in deploy/monitoring may name only the
// metrics and labels armorshim exports: these tests read the names from the
// registry a server builds with every optional part on, so renaming a
// metric or a label without changing them fails here. promtool checks the
// rules' syntax, runs their unit tests and parses the dashboard's queries
// (make monitoring, which runs TestDashboardQueriesParse).

const monitoringDir = "../deploy/monitoring"

// targetLabels are the labels a scrape adds: the rules and the dashboard
// expect `node` (README, Monitoring).
var targetLabels = []string{"node", "instance", "job"}

// exportedMetrics returns the metric names armorshim's /metrics serves,
// each with its label names, as registered by New with the profile
// directory, denials, attestation and Pod Security on.
func exportedMetrics(t *testing.T) map[string]map[string]bool {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Listen = "unix://" + filepath.Join(dir, "armorshim.sock")
	cfg.RuntimeEndpoint = "unix://" + filepath.Join(dir, "containerd.sock")
	cfg.Sysfs, cfg.Procfs = dir, dir
	cfg.Profiles.Directory = filepath.Join(dir, "profiles.d")
	cfg.NodeFeatures.Directory = ""
	cfg.Denials.KernelLog = filepath.Join(dir, "kmsg")
	cfg.Attestation.Mode = "report"
	cfg.PodSecurity.Namespaces = map[string]map[string]string{"default": {"pod-security.kubernetes.io/enforce": "baseline"}}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.closeBackends(); s.closeAuditLog() })

	descs := make(chan *prometheus.Desc)
	go func() { s.obs.reg.Describe(descs); close(descs) }()
	metrics := map[string]map[string]bool{}
	for d := range descs {
		name, labels, err := parseDesc(d)
		if err != nil {
			t.Fatal(err)
		}
		if metrics[name] == nil {
			metrics[name] = map[string]bool{}
		}
		for _, l := range labels {
			metrics[name][l] = true
		}
	}
	own := 0
	for name := range metrics {
		if strings.HasPrefix(name, "armorshim_") {
			own++
		}
	}
	if own < 10 {
		t.Fatalf("only %d armorshim_ metrics read from the registry", own)
	}
	return metrics
}

// descRE reads a Desc's String(): its name, const label names and variable
// label names. client_golang offers no accessor for them.
var descRE = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), help: .*, constLabels: \{(.*)\}, variableLabels: \{([^{}]*)\}\}$`)

func parseDesc(d *prometheus.Desc) (string, []string, error) {
	if d.Err() != nil {
		return "", nil, d.Err()
	}
	m := descRE.FindStringSubmatch(d.String())
	if m == nil {
		return "", nil, fmt.Errorf("cannot read %s", d)
	}
	name, err := strconv.Unquote(m[1])
	if err != nil {
		return "", nil, err
	}
	var labels []string
	for _, c := range regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`).FindAllStringSubmatch(m[2], -1) {
		labels = append(labels, c[1])
	}
	if m[2] != "" && len(labels) == 0 {
		return "", nil, fmt.Errorf("cannot read the constant labels of %s", d)
	}
	for _, v := range strings.Split(m[3], ",") {
		if v = strings.TrimSuffix(strings.TrimPrefix(v, "c("), ")"); v != "" {
			labels = append(labels, v)
		}
	}
	return name, labels, nil
}

// promSelector is a metric name an expression reads and the labels it
// matches.
type promSelector struct {
	name   string
	labels []string
}

// PromQL words that are not metric names. Aggregations may be followed by
// by/without before their parenthesis; the modifiers take a label list.
var (
	aggregations = nameSet("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio")
	labelListWords = nameSet("by", "without", "on", "ignoring", "group_left", "group_right")
	otherWords     = nameSet("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan")
)

func nameSet(words ...string) map[string]bool {
	m := map[string]bool{}
	for _, w := range words {
		m[w] = true
	}
	return m
}

// selectors lexes a PromQL expression (with Grafana's $variables) into the
// metric selectors it contains and the labels its by, without, on,
// ignoring, group_left and group_right lists name. It knows enough PromQL
// for the expressions here; promtool parses the rules for real.
func promSelectors(expr string) (out []promSelector, grouping []string, err error) {
	s := expr
	i := 0
	skipSpace := func() {
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
	}
	skipString := func() error {
		q := s[i]
		for i++; i < len(s); i++ {
			if s[i] == '\\' && q != '`' {
				i++
			} else if s[i] == q {
				i++
				return nil
			}
		}
		return fmt.Errorf("unterminated string in %q", expr)
	}
	skipTo := func(end byte) error {
		for i < len(s) && s[i] != end {
			if s[i] == '"' || s[i] == '\'' || s[i] == '`' {
				if err := skipString(); err != nil {
					return err
				}
				continue
			}
			i++
		}
		if i == len(s) {
			return fmt.Errorf("no %q in %q", end, expr)
		}
		i++
		return nil
	}
	ident := func() string {
		start := i
		for i < len(s) && (s[i] == '_' || s[i] == ':' || 'a' <= s[i] && s[i] <= 'z' || 'A' <= s[i] && s[i] <= 'Z' || i > start && '0' <= s[i] && s[i] <= '9') {
			i++
		}
		return s[start:i]
	}
	// matchers reads {l="v", ...} into sel's labels.
	matchers := func(sel *promSelector) error {
		i++ // {
		for {
			skipSpace()
			if i < len(s) && s[i] == ',' {
				i++
				continue
			}
			if i < len(s) && s[i] == '}' {
				i++
				return nil
			}
			l := ident()
			if l == "" {
				return fmt.Errorf("bad matcher at %d in %q", i, expr)
			}
			skipSpace()
			for i < len(s) && strings.ContainsRune("=!~", rune(s[i])) {
				i++
			}
			skipSpace()
			if i == len(s) || s[i] != '"' && s[i] != '\'' && s[i] != '`' {
				return fmt.Errorf("bad matcher value at %d in %q", i, expr)
			}
			if err := skipString(); err != nil {
				return err
			}
			sel.labels = append(sel.labels, l)
		}
	}
	for i < len(s) {
		c := s[i]
		switch {
		case strings.ContainsRune(" \t\r\n", rune(c)):
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(); err != nil {
				return nil, nil, err
			}
		case c == '[':
			if err := skipTo(']'); err != nil {
				return nil, nil, err
			}
		case c == '$': // a Grafana variable: $name or ${name}
			i++
			if i < len(s) && s[i] == '{' {
				if err := skipTo('}'); err != nil {
					return nil, nil, err
				}
			} else {
				ident()
			}
		case '0' <= c && c <= '9' || c == '.': // a number or a duration
			for i < len(s) && (s[i] == '.' || s[i] == '_' || '0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'z' || 'A' <= s[i] && s[i] <= 'Z') {
				i++
			}
		case c == '{':
			return nil, nil, fmt.Errorf("a selector without a metric name at %d in %q", i, expr)
		case c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z':
			w := ident()
			lw := strings.ToLower(w) // keywords are case-insensitive
			skipSpace()
			next := byte(0)
			if i < len(s) {
				next = s[i]
			}
			switch {
			case labelListWords[lw]:
				if next != '(' {
					break
				}
				for i++; ; i++ {
					skipSpace()
					if l := ident(); l != "" {
						grouping = append(grouping, l)
					}
					skipSpace()
					if i == len(s) || s[i] != ',' && s[i] != ')' {
						return nil, nil, fmt.Errorf("bad label list at %d in %q", i, expr)
					}
					if s[i] == ')' {
						i++
						break
					}
				}
			case aggregations[lw] || otherWords[lw] || next == '(':
				// an operator or a function
			default:
				sel := promSelector{name: w}
				if next == '{' {
					if err := matchers(&sel); err != nil {
						return nil, nil, err
					}
				}
				out = append(out, sel)
			}
		default:
			i++
		}
	}
	return out, grouping, nil
}

func TestPromSelectors(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (node, reason) (rate(a_total{outcome="refused", x=~"$node"}[$__rate_interval])) * 60`: `a_total{outcome,x} | node reason`,
		`increase(a[15m]) > 0 or (a unless a offset 15m) and ignoring (outcome, b) (c offset 15m)`:    `a a a c | outcome b`,
		`histogram_quantile(0.99, sum by (le) (rate(h_bucket{le!="+Inf", y='a}b'}[5m])))`:             `h_bucket{le,y} | le`,
		`count(b == 0) or vector(0)`:                                          `b |`,
		`topk(10, sum without (p) (d{n=~"${node}"}))`:                         `d{n} | p`,
		`x * on (job) group_left (a) y and on (job) group_left z # comment w`: `x y z | job a job`,
		`sum(rate(x[1m] @ end()))`:                                            `x |`,
		`SUM BY (a, ) (x) AND ON () y`:                                        `x y | a`,
		`ns:recorded:rate5m{a="1"}`:                                           `ns:recorded:rate5m{a} |`,
	} {
		sels, grouping, err := promSelectors(expr)
		if err != nil {
			t.Errorf("%s: %v", expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			if len(s.labels) == 0 {
				got = append(got, s.name)
			} else {
				got = append(got, s.name+"{"+strings.Join(s.labels, ",")+"}")
			}
		}
		got = append(got, "|")
		got = append(got, grouping...)
		if strings.Join(got, " ") != want {
			t.Errorf("%s: got %q, want %q", expr, strings.Join(got, " "), want)
		}
	}
	for _, bad := range []string{`{__name__="x"}`, `a{b="c"`, `rate(a[5m)`, `a{b=c}`, `sum by (a b) (x)`, `sum by (a`} {
		if _, _, err := promSelectors(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// checkExpr reports the metrics and labels of expr that armorshim does not
// export. recorded are the rules' recording rule names.
func checkExpr(metrics map[string]map[string]bool, recorded map[string]bool, expr string) []string {
	sels, grouping, err := promSelectors(expr)
	if err != nil {
		return []string{err.Error()}
	}
	if len(sels) == 0 {
		return []string{"names no metric"}
	}
	var bad []string
	// Labels that a grouping may name: the target labels and those of any
	// metric the expression reads (any at all after a recording rule).
	known, anyLabel := nameSet(targetLabels...), false
	for _, sel := range sels {
		if recorded[sel.name] {
			anyLabel = true
			continue
		}
		labels, extra := metrics[sel.name], nameSet(targetLabels...)
		if labels == nil {
			// A histogram's or summary's series.
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(sel.name, suffix); ok && metrics[base] != nil {
					labels = metrics[base]
					if suffix == "_bucket" {
						extra["le"] = true
					}
				}
			}
		}
		if labels == nil {
			bad = append(bad, fmt.Sprintf("%s is not a metric armorshim exports", sel.name))
			continue
		}
		for _, l := range sel.labels {
			if !labels[l] && !extra[l] {
				bad = append(bad, fmt.Sprintf("%s has no label %s", sel.name, l))
			}
		}
		for l := range labels {
			known[l] = true
		}
		for l := range extra {
			known[l] = true
		}
	}
	for _, l := range grouping {
		if !known[l] && !anyLabel {
			bad = append(bad, fmt.Sprintf("groups by %s, a label none of its metrics has", l))
		}
	}
	return bad
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(monitoringDir, "armorshim-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatal(err)
	}
	return rf
}

func recordedNames(rf ruleFile) map[string]bool {
	m := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				m[r.Record] = true
			}
		}
	}
	return m
}

var annotationLabelRE = regexp.MustCompile(`\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)

func TestAlertRulesNameExportedMetrics(t *testing.T) {
	metrics := exportedMetrics(t)
	rf := readRules(t)
	recorded := recordedNames(rf)
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			for _, problem := range checkExpr(metrics, recorded, r.Expr) {
				t.Errorf("rule %s: %s", name, problem)
			}
			if r.Alert == "" {
				continue
			}
			alerts++
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("alert %s: severity %q is not critical, warning or info", name, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description"} {
				if !strings.Contains(r.Annotations[a], "$labels.node") {
					t.Errorf("alert %s: the %s does not name the node", name, a)
				}
			}
			// The annotations name labels its metrics have.
			has := nameSet(targetLabels...)
			sels, _, _ := promSelectors(r.Expr)
			for _, sel := range sels {
				for l := range metrics[sel.name] {
					has[l] = true
				}
			}
			for a, text := range r.Annotations {
				for _, m := range annotationLabelRE.FindAllStringSubmatch(text, -1) {
					if !has[m[1]] {
						t.Errorf("alert %s: the %s names $labels.%s, a label none of its metrics has", name, a, m[1])
					}
				}
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts read")
	}
}

// TestAlertRulesAreUnitTested: each alert has a promtool test case in which
// it fires.
func TestAlertRulesAreUnitTested(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(monitoringDir, "armorshim-rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `json:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string            `json:"alertname"`
				ExpAlerts []json.RawMessage `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !fires[r.Alert] {
				t.Errorf("alert %s: no case of armorshim-rules_test.yaml expects it to fire", r.Alert)
			}
		}
	}
}

// labelValuesRE reads a Grafana variable query label_values(selector, label).
var labelValuesRE = regexp.MustCompile(`^\s*label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

func TestDashboardNamesExportedMetrics(t *testing.T) {
	metrics := exportedMetrics(t)
	recorded := recordedNames(readRules(t))
	b, err := os.ReadFile(filepath.Join(monitoringDir, "armorshim-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	templating, _ := dash["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, v := range list {
		v, _ := v.(map[string]any)
		name, _ := v["name"].(string)
		vars[name] = true
		if v["type"] != "query" {
			continue
		}
		if ds, _ := v["datasource"].(map[string]any); ds["uid"] != "${datasource}" {
			t.Errorf("variable %s: datasource %v is not ${datasource}", name, v["datasource"])
		}
		q := v["query"]
		if m, ok := q.(map[string]any); ok {
			q = m["query"]
		}
		qs, _ := q.(string)
		m := labelValuesRE.FindStringSubmatch(qs)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", name, qs)
			continue
		}
		for _, problem := range checkExpr(metrics, recorded, m[1]) {
			t.Errorf("variable %s: %s", name, problem)
		}
		if l := m[2]; !nameSet(targetLabels...)[l] {
			t.Errorf("variable %s: label %s is not a target label", name, l)
		}
	}
	for _, want := range []string{"datasource", "node", "instance"} {
		if !vars[want] {
			t.Errorf("the dashboard has no variable %s", want)
		}
	}

	// Every panel and query reads the datasource variable; every query's
	// metrics exist.
	exprs := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if ds, ok := v["datasource"]; ok && path != "templating" {
				if m, _ := ds.(map[string]any); m["uid"] != "${datasource}" {
					t.Errorf("%s: datasource %v is not ${datasource}", path, ds)
				}
			}
			if e, ok := v["expr"].(string); ok {
				exprs++
				for _, problem := range checkExpr(metrics, recorded, e) {
					t.Errorf("%s: %s", path, problem)
				}
			}
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if path == "" && k == "templating" {
					continue
				}
				p := k
				if title, ok := v["title"].(string); ok {
					p = title + "." + k
				}
				walk(p, v[k])
			}
		case []any:
			for _, e := range v {
				walk(path, e)
			}
		}
	}
	walk("", dash)
	if exprs < 10 {
		t.Fatalf("only %d queries read from the dashboard", exprs)
	}
}

// TestDashboardQueriesParse has promtool ($PROMTOOL, set by make
// monitoring) parse every query of the dashboard as a recording rule,
// Grafana's variables replaced by values.
func TestDashboardQueriesParse(t *testing.T) {
	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		t.Skip("PROMTOOL is not set (make monitoring sets it)")
	}
	b, err := os.ReadFile(filepath.Join(monitoringDir, "armorshim-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if e, ok := v["expr"].(string); ok {
				exprs = append(exprs, e)
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	walk(dash)
	vars := strings.NewReplacer("$__rate_interval", "4m", "$__range", "6h", "$__interval", "1m", "${node}", ".*", "$node", ".*", "${instance}", ".*", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n- name: dashboard\n  rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(vars.Replace(e))
		fmt.Fprintf(&rules, "  - record: dashboard:query%d\n    expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's %d queries: %v\n%s", len(exprs), err, out)
	}
	t.Logf("%d queries parsed: %s", len(exprs), bytes.TrimSpace(out))
}
