package cri

import "testing"

func TestPidOf(t *testing.T) {
	for _, c := range []struct {
		info string
		want int
	}{
		{`{"sandboxID":"sb","pid":4242,"removing":false,"config":{"metadata":{"name":"hello"}},"runtimeSpec":{"process":{"apparmorProfile":"x"}}}`, 4242},
		{`{"config":{"metadata":{"name":"pid"},"labels":{"pid":"7"}},"runtimeSpec":{},"pid":99}`, 99},
		{`{"sandboxID":"sb","removing":false}`, 0},
		{`{"pid":"4242"}`, 0},
		{`not json`, 0},
		{``, 0},
		{`[1,2]`, 0},
	} {
		if got := pidOf(c.info); got != c.want {
			t.Errorf("pidOf(%q) = %d, want %d", c.info, got, c.want)
		}
	}
}

func BenchmarkPidOf(b *testing.B) {
	info := `{"sandboxID":"0123456789abcdef","pid":4242,"removing":false,"snapshotKey":"k","snapshotter":"overlayfs","runtimeType":"io.containerd.runc.v2","runtimeOptions":{},"config":{"metadata":{"name":"hello"},"image":{"image":"busybox"}},"runtimeSpec":{"ociVersion":"1.2.0","process":{"args":["sh"],"apparmorProfile":"cri-containerd.apparmor.d"}}}`
	for i := 0; i < b.N; i++ {
		if pidOf(info) != 4242 {
			b.Fatal("wrong pid")
		}
	}
}
