//go:build tools

// Package tools pins umoci, which writes and reads the OCI image layouts of the gpupool images
// (deploy/image/build.sh) without a container engine, and unpacks them into runtime bundles for
// the image test. Its own module, so that it moves no version of the tools in ../go.mod.
package tools

import _ "github.com/opencontainers/umoci/cmd/umoci"
