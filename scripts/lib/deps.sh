# Shared by scripts/demo and scripts/test: make sure the system tools waypost
# needs are installed. On Debian/Ubuntu as root it installs them; elsewhere it
# says exactly what to install and stops.
#
# usage: need_packages PACKAGE:WHAT ...
# WHAT is a command on PATH, or an absolute path to a file the package
# installs (for packages that provide files rather than commands, such as
# libprotobuf-dev's google/protobuf/descriptor.proto).
need_packages() {
    local missing=() spec pkg what
    for spec in "$@"; do
        pkg=${spec%%:*}
        what=${spec#*:}
        case "$what" in
            /*) [ -e "$what" ] || missing+=("$pkg") ;;
            *) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        return 0
    fi
    echo "waypost needs these system packages: ${missing[*]}" >&2
    if command -v apt-get >/dev/null 2>&1; then
        echo "  install them with: sudo apt-get install ${missing[*]}" >&2
    else
        echo "  protobuf-compiler provides \`protoc\` and libprotobuf-dev its well-known types" >&2
        echo "  (google/protobuf/*.proto); etcd-client's build script needs both;" >&2
        echo "  etcd-server provides \`etcd\` 3.4 or newer (needed by the tests)." >&2
        echo "  Install them with your system's package manager and run this again." >&2
    fi
    exit 1
}

# The interop tests run gRPC C-core clients through Python's grpcio, and the
# policy interop tests need a recent one (ring_hash's requestHashHeader
# came in grpcio 1.60; Debian 12's python3-grpcio is 1.51). Finds a python3
# whose grpcio is at least 1.60, else installs grpcio with pip into a
# virtual environment under ~/.cache/waypost (installing python3-venv with
# apt-get when missing), and exports it as WAYPOST_PYTHON. The admin tests
# parse `/metrics` with the same Python's prometheus_client (OpenMetrics).
#
# usage: need_python_grpcio
need_python_grpcio() {
    local py venv="${XDG_CACHE_HOME:-$HOME/.cache}/waypost/python"
    local recent='import grpc, sys, prometheus_client.openmetrics.parser; v = tuple(int(x) for x in grpc.__version__.split(".")[:2]); sys.exit(0 if v >= (1, 60) else 1)'
    for py in "$venv/bin/python3" python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c "$recent" 2>/dev/null; then
            export WAYPOST_PYTHON="$py"
            return 0
        fi
    done
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "==> installing python3-venv (apt-get)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        fi
    fi
    echo "==> installing grpcio and prometheus_client (pip, into $venv)"
    local log
    log=$(mktemp)
    # A network whose TLS needs its own CA names its bundle in SSL_CERT_FILE.
    local cert=()
    [ -n "${SSL_CERT_FILE:-}" ] && cert=(--cert "$SSL_CERT_FILE")
    if python3 -m venv "$venv" >"$log" 2>&1 \
        && "$venv/bin/python3" -m pip install -q "${cert[@]}" grpcio prometheus_client >>"$log" 2>&1 \
        && "$venv/bin/python3" -c "$recent" >>"$log" 2>&1; then
        rm -f "$log"
        export WAYPOST_PYTHON="$venv/bin/python3"
        return 0
    fi
    # Say why, then try pip without a venv (Debian's python3-pip).
    tail -15 "$log" >&2
    rm -f "$log"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing python3-pip (apt-get) and grpcio (pip --user)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        if python3 -m pip install -q --user --break-system-packages "${cert[@]}" grpcio prometheus_client \
            && python3 -c "$recent" 2>/dev/null; then
            export WAYPOST_PYTHON=python3
            return 0
        fi
    fi
    echo "the interop tests need Python 3 with grpcio 1.60 or later and prometheus_client:" >&2
    echo "  python3 -m venv ~/.cache/waypost/python && ~/.cache/waypost/python/bin/pip install grpcio prometheus_client" >&2
    exit 1
}

# The interop tests also build a grpc-go client, in GOPATH mode against
# Debian's packaged grpc-go (no module downloads). Makes sure `go` and those
# sources are there, installing golang-go and golang-google-grpc-dev when
# missing.
#
# usage: need_go_grpc
need_go_grpc() {
    local grpclb=/usr/share/gocode/src/google.golang.org/grpc/balancer/grpclb
    command -v go >/dev/null 2>&1 && [ -d "$grpclb" ] && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing golang-go golang-google-grpc-dev (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go golang-google-grpc-dev >/dev/null
        return 0
    fi
    echo "the interop tests need Go and grpc-go's Debian sources:" >&2
    echo "  sudo apt-get install golang-go golang-google-grpc-dev" >&2
    exit 1
}

# What building waypost needs besides the Rust toolchain: a C linker and
# libc's development files (rustc links through `cc`; gcc only *recommends*
# libc6-dev), the CA certificates cargo fetches crates with, and for
# etcd-client's build script `protoc` plus the well-known types' .proto
# files it imports (protobuf-compiler only *recommends* libprotobuf-dev, so
# an install without recommends has the binary and not the includes).
BUILD_NEEDS=(
    gcc:cc
    libc6-dev:/usr/include/stdio.h
    ca-certificates:/etc/ssl/certs/ca-certificates.crt
    protobuf-compiler:protoc
    libprotobuf-dev:/usr/include/google/protobuf/descriptor.proto
)
