//go:build conformance

package conformance

import (
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// h2specPath is the :path of h2spec's requests. gRPC-Go and the relay
// answer any path; armorshim relays only CRI paths, so every target gets
// one that armorshim streams to its backend untouched (Version is never
// held).
const h2specPath = "/runtime.v1.RuntimeService/Version"

// h2specTimeout is how long h2spec waits for each frame it expects, in
// seconds (its default). A case that fails through a target but passed
// directly is run again alone with h2specRetryTimeout.
const (
	h2specTimeout      = 2
	h2specRetryTimeout = 5
)

// outcome is one case's result on one target.
type outcome struct {
	Result string // pass, fail, skip; "" when the case did not run
	Detail string // for a failure: what was expected, what came
}

const (
	pass = "pass"
	fail = "fail"
	skip = "skip"
)

// caseInfo names a case.
type caseInfo struct {
	ID    string // h2spec's spec ID (http2/5.1/1), or the interop test case
	Title string
}

// junit is h2spec's JUnit report.
type junit struct {
	Suites []struct {
		Name    string `xml:"name,attr"`
		Package string `xml:"package,attr"`
		Cases   []struct {
			Title   string    `xml:"classname,attr"`
			Error   *junitMsg `xml:"error"`
			Failure *junitMsg `xml:"failure"`
			Skipped *junitMsg `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitMsg struct {
	Text string `xml:",chardata"`
}

// runH2spec runs h2spec (all of it, or the given spec IDs) against addr
// and returns each case's outcome by ID, in h2spec's order.
func runH2spec(ctx context.Context, bin, addr, dir, name string, timeout int, specs ...string) ([]caseInfo, map[string]outcome, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	report := filepath.Join(dir, name+".xml")
	os.Remove(report)
	args := append([]string{"-h", host, "-p", port, "-P", h2specPath, "-o", strconv.Itoa(timeout), "-j", report}, specs...)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, runErr := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, name+".txt"), out, 0o644)
	b, err := os.ReadFile(report)
	if err != nil {
		// h2spec exits non-zero when a case fails: only a missing report
		// is an error of the run.
		return nil, nil, fmt.Errorf("h2spec %s: %v (%v)\n%s", name, err, runErr, out)
	}
	var j junit
	if err := xml.Unmarshal(b, &j); err != nil {
		return nil, nil, fmt.Errorf("h2spec %s report: %w", name, err)
	}
	var cases []caseInfo
	res := map[string]outcome{}
	for _, s := range j.Suites {
		for i, c := range s.Cases {
			id := s.Package + "/" + strconv.Itoa(i+1)
			o := outcome{Result: pass}
			switch {
			case c.Skipped != nil:
				o.Result = skip
			case c.Error != nil || c.Failure != nil:
				msg := c.Error
				if msg == nil {
					msg = c.Failure
				}
				o.Result, o.Detail = fail, h2specDetail(msg.Text)
			}
			if len(specs) > 0 {
				// Run alone, a case is numbered 1 in its section: match it by
				// its section and title.
				for _, want := range specs {
					if strings.HasPrefix(want, s.Package+"/") {
						id = want
					}
				}
			}
			cases = append(cases, caseInfo{ID: id, Title: s.Name + ": " + c.Title})
			res[id] = o
		}
	}
	if len(cases) == 0 {
		return nil, nil, fmt.Errorf("h2spec %s ran no case:\n%s", name, out)
	}
	return cases, res, nil
}

// socketOp is the part of a Go network error naming the connection, whose
// port changes from run to run.
var socketOp = regexp.MustCompile(`(read|write) (tcp|unix) \S+->\S+: `)

// h2specDetail turns h2spec's "expected\nactual" error text into one line.
func h2specDetail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = socketOp.ReplaceAllString(strings.TrimSpace(lines[i]), "")
	}
	if len(lines) >= 2 {
		return "expected " + strings.Join(lines[:len(lines)-1], " or ") + "; got " + lines[len(lines)-1]
	}
	return strings.Join(lines, " ")
}
