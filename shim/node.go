package shim

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/host"
)

// newLoader returns the profile directory loader of cfg, or nil when off.
func newLoader(cfg ProfilesConfig, h *host.Reader) *host.Loader {
	if cfg.Directory == "" {
		return nil
	}
	return &host.Loader{
		Dir:        cfg.Directory,
		Parser:     cfg.Parser,
		StatusFile: cfg.StatusFile,
		Enabled: func() bool {
			snap := h.Snapshot()
			return snap.Err == nil && snap.Enabled
		},
		Kernel: h.Snapshot,
	}
}

// registerLoaderMetrics exposes the loader's file states.
func registerLoaderMetrics(reg prometheus.Registerer, l *host.Loader) {
	count := func(state string) func() float64 {
		return func() float64 {
			files, _ := l.Status()
			n := 0
			for _, f := range files {
				if f.State() == state {
					n++
				}
			}
			return float64(n)
		}
	}
	for _, state := range []string{"loaded", "failed", "refused"} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "armorshim_profile_files",
			Help:        "Files of the profile directory by state: loaded, failed (the last load failed) or refused (not trusted, never loaded).",
			ConstLabels: prometheus.Labels{"state": state},
		}, count(state)))
	}
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "armorshim_profile_load_failures_total",
		Help: "Runs of apparmor_parser on a file of the profile directory that failed (each is retried with backoff).",
	}, func() float64 { return float64(l.Totals().LoadFailures) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "armorshim_profile_reloads_total",
		Help: "Loads of a file of the profile directory because profiles it defines were gone from the kernel (apparmor_parser -R, a package upgrade).",
	}, func() float64 { return float64(l.Totals().Reloads) }))
}

// featureWriter keeps the node-feature-discovery file in step with the
// host: it rewrites it when the profile set changes (securityfs revision)
// and before it expires.
type featureWriter struct {
	cfg  NodeFeaturesConfig
	host *host.Reader

	last    string // the content last written
	written time.Time
	missing bool // the directory was missing at the last try
	failing bool // the last write failed
}

// refresh writes the file if its content changed or half its expiry passed.
func (w *featureWriter) refresh(now time.Time) {
	if _, err := os.Stat(w.cfg.Directory); errors.Is(err, fs.ErrNotExist) {
		if !w.missing {
			klog.InfoS("Not writing node features: the directory does not exist (is node-feature-discovery deployed?)", "directory", w.cfg.Directory)
		}
		w.missing = true
		return
	}
	w.missing = false
	expiry := time.Duration(w.cfg.Expiry)
	// The expiry line changes on every render, so compare without it.
	body := string(host.Features(w.host.Snapshot(), time.Time{}))
	if body == w.last && now.Sub(w.written) < expiry/2 {
		return
	}
	if err := host.WriteFeatures(w.cfg.Directory, host.Features(w.host.Snapshot(), now.Add(expiry))); err != nil {
		// Logged once per change: a full disk fails every refresh.
		if !w.failing {
			klog.ErrorS(err, "Writing node features failed; retrying at each refresh", "directory", w.cfg.Directory)
		}
		w.failing = true
		return
	}
	if w.failing {
		klog.InfoS("Node features written again", "file", w.cfg.Directory+"/"+host.FeatureFileName)
		w.failing = false
	} else if body != w.last {
		klog.InfoS("Node features written", "file", w.cfg.Directory+"/"+host.FeatureFileName)
	}
	w.last, w.written = body, now
}

func (w *featureWriter) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.refresh(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
