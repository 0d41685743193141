#!/usr/bin/env bash
# Builds the real programs weft's tests run as peers, from their published
# Go modules, in a scratch directory outside the repository, cached under
# a versioned path so that repeated runs do not rebuild:
#
#   .ci/peers.sh flanneld          -> $WEFT_PEERS_DIR/flanneld-<version>/flanneld
#   .ci/peers.sh kube-apiserver    -> $WEFT_PEERS_DIR/kube-apiserver-<version>/kube-apiserver
#
# Prints the binary's path. Needs Go and the Go module proxy.
set -euo pipefail

FLANNEL_VERSION=v0.28.10
K8S_VERSION=v1.34.4
ROOT=${WEFT_PEERS_DIR:-/var/cache/weft-peers}

flanneld() {
    local dir="$ROOT/flanneld-$FLANNEL_VERSION"
    if [ ! -x "$dir/flanneld" ]; then
        mkdir -p "$dir/src/tencentvpc-stub/v20170312"
        cd "$dir/src"
        # flanneld's main package links its tencent-vpc backend, whose SDK
        # module (tencentcloud/vpc) the module proxy refuses ("403
        # Forbidden: This module version is not available"). The tests
        # never use that backend; a stand-in whose every call fails lets
        # the rest build unchanged.
        cat > tencentvpc-stub/go.mod <<'EOF'
module github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc

go 1.21
EOF
        cat > tencentvpc-stub/v20170312/stub.go <<'EOF'
// Package v20170312 stands in for Tencent Cloud's VPC SDK for flanneld's
// tencent-vpc backend, which weft's tests never use: every call fails.
package v20170312

import "errors"

var errStub = errors.New("tencent-vpc backend not available in this build")

type Filter struct {
	Name   *string
	Values []*string
}

type Route struct {
	DestinationCidrBlock *string
	GatewayType          *string
	GatewayId            *string
	RouteType            *string
	RouteId              *uint64
	Enabled              *bool
}

type RouteTable struct {
	RouteTableId *string
	RouteSet     []*Route
}

type DescribeRouteTablesRequest struct{ Filters []*Filter }
type DescribeRouteTablesResponseParams struct{ RouteTableSet []*RouteTable }
type DescribeRouteTablesResponse struct {
	Response *DescribeRouteTablesResponseParams
}
type DeleteRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}
type CreateRoutesRequest struct {
	RouteTableId *string
	Routes       []*Route
}

type Client struct{}

func NewClientWithSecretId(id, key, region string) (*Client, error) { return &Client{}, nil }
func NewDescribeRouteTablesRequest() *DescribeRouteTablesRequest   { return &DescribeRouteTablesRequest{} }
func NewDeleteRoutesRequest() *DeleteRoutesRequest                 { return &DeleteRoutesRequest{} }
func NewCreateRoutesRequest() *CreateRoutesRequest                 { return &CreateRoutesRequest{} }

func (c *Client) DescribeRouteTables(*DescribeRouteTablesRequest) (*DescribeRouteTablesResponse, error) {
	return nil, errStub
}
func (c *Client) DeleteRoutes(*DeleteRoutesRequest) (*struct{}, error) { return nil, errStub }
func (c *Client) CreateRoutes(*CreateRoutesRequest) (*struct{}, error) { return nil, errStub }
EOF
        cat > go.mod <<'EOF'
module weftpeers/flanneld

go 1.25.9

replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc => ./tencentvpc-stub
EOF
        go get "github.com/flannel-io/flannel@$FLANNEL_VERSION" >&2
        # cgo on: the udp backend is flannel's C proxy.
        CGO_ENABLED=1 go build -o "$dir/flanneld.tmp" \
            -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$FLANNEL_VERSION" \
            github.com/flannel-io/flannel >&2
        mv "$dir/flanneld.tmp" "$dir/flanneld"
    fi
    echo "$dir/flanneld"
}

kube_apiserver() {
    local dir="$ROOT/kube-apiserver-$K8S_VERSION"
    if [ ! -x "$dir/kube-apiserver" ]; then
        mkdir -p "$dir/src"
        cd "$dir/src"
        # k8s.io/kubernetes points its staging modules (k8s.io/api, …) at
        # ./staging; outside its tree each must be replaced by its
        # published v0.x version.
        local gomod staging
        gomod=$(go list -m -json "k8s.io/kubernetes@$K8S_VERSION" |
            sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
        staging="v0.${K8S_VERSION#v1.}"
        {
            printf 'module weftpeers/kubeapiserver\n\ngo 1.24.0\n\n'
            grep '=> ./staging' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
        } > go.mod
        go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >&2
        go build -o "$dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
        mv "$dir/kube-apiserver.tmp" "$dir/kube-apiserver"
    fi
    echo "$dir/kube-apiserver"
}

case "${1:-}" in
    flanneld) flanneld ;;
    kube-apiserver) kube_apiserver ;;
    *) echo "usage: $0 flanneld|kube-apiserver" >&2; exit 2 ;;
esac
