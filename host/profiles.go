package host

import (
	"strings"

	"github.com/armorshim/armorshim/apparmor"
)

// ParseProfiles parses securityfs's profiles file: one "name (mode)" per line.
// Names may hold spaces, "//" children and a ":ns:" namespace, so the mode is
// taken after the last " (". A line without a mode is kept with an empty mode.
func ParseProfiles(data string) map[string]apparmor.Mode {
	profiles := make(map[string]apparmor.Mode, strings.Count(data, "\n")+1)
	for len(data) > 0 {
		line := data
		if i := strings.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = ""
		}
		if line == "" {
			continue
		}
		name, mode := line, ""
		if i := strings.LastIndex(line, " ("); i >= 0 && strings.HasSuffix(line, ")") {
			name, mode = line[:i], line[i+2:len(line)-1]
		}
		profiles[name] = apparmor.Mode(mode)
	}
	return profiles
}
