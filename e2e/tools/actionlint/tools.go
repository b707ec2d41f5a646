//go:build tools

// Package tools pins actionlint, the linter the release workflow (.github/workflows) is checked
// with. Its own module, so that it moves no version of the control-plane tools in ../go.mod.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
