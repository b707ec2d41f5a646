//go:build tools

// Package tools pins promtool, the Prometheus rule and PromQL checker the chart test runs on the
// chart's alerting rules and dashboard queries. It lives in its own module so that Prometheus's
// dependency graph does not move the versions the control-plane tools in ../go.mod are built with.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
