# Shared by scripts/demo and scripts/test: make sure the system tools waypost
# needs are installed. On Debian/Ubuntu as root it installs them; elsewhere it
# says exactly what to install and stops.
#
# usage: need_packages PACKAGE:COMMAND ...
need_packages() {
    local missing=() spec pkg cmd
    for spec in "$@"; do
        pkg=${spec%%:*}
        cmd=${spec##*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
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
        echo "  protobuf-compiler provides \`protoc\` (needed by etcd-client's build script);" >&2
        echo "  etcd-server provides \`etcd\` 3.4 or newer (needed by the tests)." >&2
        echo "  Install both with your system's package manager and run this again." >&2
    fi
    exit 1
}
