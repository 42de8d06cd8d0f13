package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// kube is the little of the Kubernetes API the installer uses, as its pod's
// service account: label its node, and ask whether its DaemonSet is being
// deleted.
type kube struct {
	base   string // https://host:port
	token  string
	client *http.Client
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// inCluster reads the service account the kubelet mounted and the API
// server's address from the environment (KUBERNETES_SERVICE_HOST/PORT).
func inCluster(dir string) (*kube, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, fmt.Errorf("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not in a pod")
	}
	token, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s/ca.crt holds no certificate", dir)
	}
	return &kube{
		base:  "https://" + net.JoinHostPort(host, port),
		token: strings.TrimSpace(string(token)),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}, nil
}

func (k *kube) do(ctx context.Context, method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, k.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// label sets the node's labels; a nil value removes one.
func (k *kube) label(ctx context.Context, node string, labels map[string]*string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	code, resp, err := k.do(ctx, http.MethodPatch, "/api/v1/nodes/"+node, "application/merge-patch+json", body)
	if err != nil {
		return fmt.Errorf("labelling node %s: %w", node, err)
	}
	if code != http.StatusOK {
		return fmt.Errorf("labelling node %s: %d %.300s", node, code, resp)
	}
	return nil
}

// daemonSetGoing reports whether the DaemonSet is gone or being deleted.
func (k *kube) daemonSetGoing(ctx context.Context, namespace, name string) (bool, error) {
	code, resp, err := k.do(ctx, http.MethodGet, "/apis/apps/v1/namespaces/"+namespace+"/daemonsets/"+name, "", nil)
	if err != nil {
		return false, err
	}
	switch code {
	case http.StatusNotFound:
		return true, nil
	case http.StatusOK:
		var ds struct {
			Metadata struct {
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(resp, &ds); err != nil {
			return false, err
		}
		return ds.Metadata.DeletionTimestamp != nil, nil
	}
	return false, fmt.Errorf("GET daemonset %s/%s: %d %.300s", namespace, name, code, resp)
}

// labelValue makes s a valid label value: at most 63 characters of
// [A-Za-z0-9_.-], starting and ending alphanumeric.
func labelValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return strings.Trim(string(b), "-_.")
}
