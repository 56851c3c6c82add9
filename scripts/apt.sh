# Sourced by the other scripts: runs a command as root, and installs Debian
# packages (the package lists updated once per script run). Expects a `say`.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        say "updating the Debian package lists"
        as_root apt-get update -qq
        apt_updated=true
    fi
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
