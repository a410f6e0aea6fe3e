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

# The interop tests run gRPC C-core clients through Python's grpcio. Finds a
# python3 that imports it (installing grpcio with pip, or Debian's
# python3-grpcio, when missing) and exports it as WAYPOST_PYTHON.
#
# usage: need_python_grpcio
need_python_grpcio() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import grpc' 2>/dev/null; then
            export WAYPOST_PYTHON="$py"
            return 0
        fi
    done
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        echo "==> installing grpcio (pip)"
        if python3 -m pip install -q grpcio >/dev/null 2>&1 && python3 -c 'import grpc' 2>/dev/null; then
            export WAYPOST_PYTHON=python3
            return 0
        fi
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "==> installing python3-grpcio (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-grpcio >/dev/null
        if /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
            export WAYPOST_PYTHON=/usr/bin/python3
            return 0
        fi
    fi
    echo "the interop tests need Python 3 with grpcio:" >&2
    echo "  python3 -m pip install grpcio   (or: apt-get install python3-grpcio)" >&2
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
