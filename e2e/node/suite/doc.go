// Package suite links Kubernetes' own [sig-network] specs (test/e2e/network,
// and test/e2e/apps which they import) into one test binary, run through
// upstream's e2e framework exactly as e2e.test runs them. Nothing here
// changes a spec; e2e/node/conformance.sh chooses which ones run.
package suite
