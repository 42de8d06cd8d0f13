//go:build conformance

package conformance

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Markers of the results block in docs/conformance.md.
const (
	resultsBegin = "<!-- results: written by the conformance suite (ARMORSHIM_CONFORMANCE_DOC) -->"
	resultsEnd   = "<!-- end of results -->"
)

// cell shows an outcome in a table.
func cell(s *suite, target, id string) string {
	o := s.results[target][id]
	switch {
	case o.Result == "":
		return "—"
	case s.retried[target][id] != "":
		return o.Result + " (on retry)"
	}
	return o.Result
}

func escape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// failure says what went wrong with a case: on gRPC-Go if it failed
// there, else on the first target where it failed.
func failure(s *suite, id string) string {
	for _, tg := range s.targets {
		if o := s.results[tg][id]; o.Result == fail {
			return targetTitle[tg] + ": " + o.Detail
		}
	}
	return ""
}

// report renders the results as markdown.
func report(tl tools, h2, gi *suite, timing string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Run on %s with %s, h2spec %s and gRPC-Go %s (interop client and server); %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.Version(), tl.h2specVersion, tl.grpcVersion, timing)

	fmt.Fprintf(&b, "### h2spec %s\n\n", h2.version)
	fmt.Fprintf(&b, "%d cases, plaintext (h2c), `:path` `%s`.\n\n", len(h2.cases), h2specPath)
	b.WriteString("| target | passed | failed | skipped |\n| --- | --- | --- | --- |\n")
	for _, tg := range h2.targets {
		n := map[string]int{}
		for _, c := range h2.cases {
			n[h2.results[tg][c.ID].Result]++
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d |\n", targetTitle[tg], n[pass], n[fail], n[skip])
	}
	b.WriteString("\nThe cases that do not pass on every target (every other case passes on all three):\n\n")
	b.WriteString("| case |")
	for _, tg := range h2.targets {
		fmt.Fprintf(&b, " %s |", targetTitle[tg])
	}
	b.WriteString(" what fails |\n| --- |" + strings.Repeat(" --- |", len(h2.targets)+1) + "\n")
	for _, c := range h2.cases {
		all := true
		for _, tg := range h2.targets {
			all = all && h2.results[tg][c.ID].Result == pass && h2.retried[tg][c.ID] == ""
		}
		if all {
			continue
		}
		fmt.Fprintf(&b, "| `%s` %s |", c.ID, escape(c.Title))
		for _, tg := range h2.targets {
			fmt.Fprintf(&b, " %s |", cell(h2, tg, c.ID))
		}
		fmt.Fprintf(&b, " %s |\n", escape(failure(h2, c.ID)))
	}

	fmt.Fprintf(&b, "\n### gRPC-Go interop %s\n\n", gi.version)
	b.WriteString("| case | what |")
	for _, tg := range gi.targets {
		fmt.Fprintf(&b, " %s |", targetTitle[tg])
	}
	b.WriteString("\n| --- | --- |" + strings.Repeat(" --- |", len(gi.targets)) + "\n")
	for _, c := range gi.cases {
		fmt.Fprintf(&b, "| `%s` | %s |", c.ID, c.Title)
		for _, tg := range gi.targets {
			fmt.Fprintf(&b, " %s |", cell(gi, tg, c.ID))
		}
		b.WriteString("\n")
	}
	var fails []string
	for _, c := range gi.cases {
		for _, tg := range gi.targets {
			if o := gi.results[tg][c.ID]; o.Result == fail {
				fails = append(fails, fmt.Sprintf("- `%s` on %s: %s", c.ID, targetTitle[tg], escape(o.Detail)))
			}
		}
	}
	if len(fails) > 0 {
		b.WriteString("\nFailures:\n\n" + strings.Join(fails, "\n") + "\n")
	}

	b.WriteString("\n### Differences\n\n")
	n := 0
	for _, s := range []*suite{h2, gi} {
		for _, k := range sortedKeys(s.differences) {
			n++
			state := "**not allowed: the run fails**"
			if why, ok := knownDifferences[k]; ok {
				state = "known (`knownDifferences`: " + escape(why) + ")"
			}
			fmt.Fprintf(&b, "- `%s`: passes direct, fails through the relay: %s; %s\n", k, escape(s.differences[k]), state)
		}
		for _, tg := range sortedKeys(s.retried) {
			for _, id := range sortedKeys(s.retried[tg]) {
				n++
				fmt.Fprintf(&b, "- `%s %s %s` failed once through the relay (%s), then passed when run again\n", s.name, tg, id, escape(s.retried[tg][id]))
			}
		}
	}
	if n == 0 {
		b.WriteString("None: every case that passes against gRPC-Go directly passes through the relay and armorshim.\n")
	}
	return b.String()
}

// writeResults replaces the results block of the document at path.
func writeResults(path, rep string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, resultsBegin), strings.Index(s, resultsEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no results block (%q ... %q)", path, resultsBegin, resultsEnd)
	}
	s = s[:i+len(resultsBegin)] + "\n\n" + rep + "\n" + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
