#!/usr/bin/env python3
"""Build kproxy's container image without a registry or a container daemon.

The root filesystem is assembled from Debian packages (the tools kproxy's
backends run: nft, iptables in both flavours, ipset, conntrack, ip, and the
libraries they and kproxy need, found by following the packages' Depends)
plus the kproxy binary, and written as an OCI image archive that
`ctr images import`, `podman load`, `skopeo copy oci-archive:...` and
`docker load` read.

Reproducible: the same binary and the same package versions give the same
image digest (fixed file times and owners, sorted entries, gzip without a
time stamp). The packages' versions are printed and kept in the image as
/usr/share/kproxy/packages.txt.

usage: image.py [--binary PATH] [--install-as PATH] [--name REF] [--out FILE] [--debs DIR]
  --binary  the kproxy binary (default target/release/kproxy)
  --install-as  where the binary goes in the image, also its entrypoint
            (default /usr/local/bin/kproxy)
  --name    the image reference (default localhost/kproxy:VERSION)
  --out     the archive to write (default kproxy-image.tar)
  --debs    where downloaded .debs are kept (default ~/.cache/kproxy-image/debs)
Needs apt-get, apt-cache and dpkg-deb (a Debian machine); the packages come
from the machine's configured Debian archive. Prints the image's digest last.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

# The tools kproxy runs, and the runtime libraries of a Rust binary.
ROOTS = ["libc6", "libgcc-s1", "nftables", "iptables", "ipset", "conntrack", "iproute2"]
# Depends that only matter to a package manager or an interactive system:
# configuration prompts, dpkg itself, setcap, info pages.
PRUNE = {"debconf", "debconf-2.0", "cdebconf", "dpkg", "install-info", "tar", "libcap2-bin"}
# Files no one reads in the image.
DROP = re.compile(r"^usr/(share/(doc|man|info|locale|lintian|bug|bash-completion|zsh)|lib/x86_64-linux-gnu/gconv)/")
# Debian 12 ships packages' files under /bin, /sbin and /lib, and makes
# those links to /usr at install time (usrmerge); the image does the same.
MERGED = ("bin", "sbin", "lib", "lib64")
MTIME = 1700000000  # 2023-11-14T22:13:20Z, for every entry and the config
CREATED = "2023-11-14T22:13:20Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def closure(roots):
    """The packages the roots need, following Depends and Pre-Depends (the
    first alternative of each), without the PRUNE ones."""
    seen, todo = set(), list(roots)
    while todo:
        pkg = todo.pop()
        if pkg in seen or pkg in PRUNE:
            continue
        seen.add(pkg)
        out = run("apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                  "--no-breaks", "--no-replaces", "--no-enhances", pkg)
        alternative = False
        for line in out.splitlines()[1:]:
            m = re.match(r"\s*(\|)?(Depends|PreDepends|Pre-Depends):\s*<?([^>\s]+)>?", line)
            if not m:
                continue
            # "|Depends: a" then "Depends: b": a or b; take a.
            if not alternative and m.group(3) not in PRUNE:
                todo.append(m.group(3))
            alternative = m.group(1) == "|"
    return sorted(seen)


def versions(pkgs):
    """Each package's candidate version in the configured archive."""
    found = {}
    for pkg in pkgs:
        policy = run("apt-cache", "policy", pkg)
        m = re.search(r"Candidate:\s*(\S+)", policy)
        if not m or m.group(1) == "(none)":
            sys.exit(f"image.py: Debian package {pkg} has no candidate version (apt-get update?)")
        found[pkg] = m.group(1)
    return found


def download(pkgs, debs):
    """The .deb of each package at its candidate version, downloaded once."""
    os.makedirs(debs, exist_ok=True)
    paths = {}
    missing = []
    for pkg, ver in pkgs.items():
        name = f"{pkg}_{ver.replace(':', '%3a')}_"
        hit = [f for f in os.listdir(debs) if f.startswith(name) and f.endswith(".deb")]
        if hit:
            paths[pkg] = os.path.join(debs, sorted(hit)[0])
        else:
            missing.append(f"{pkg}={ver}")
    if missing:
        subprocess.run(["apt-get", "download", "-q", *missing], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
        return download(pkgs, debs)
    return paths


class Layer:
    """A tar layer built in memory, entries sorted by path, owners root."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def add(self, info, data=None):
        info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
        info.pax_headers = {}
        self.entries[info.name] = (info, data)

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                ti = tarfile.TarInfo(p)
                ti.type, ti.mode = tarfile.DIRTYPE, (mode if i == len(parts) else 0o755)
                self.add(ti)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        ti = tarfile.TarInfo(path)
        ti.size, ti.mode = len(data), mode
        self.add(ti, data)

    def link(self, path, target):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        ti = tarfile.TarInfo(path)
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        self.add(ti)

    def deb(self, path):
        """Every file of a .deb's data, usrmerged, hard links made copies."""
        raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], check=True, capture_output=True).stdout
        files = {}
        with tarfile.open(fileobj=io.BytesIO(raw)) as t:
            for m in t.getmembers():
                name = merged(m.name)
                if not name or DROP.match(name + ("/" if m.isdir() else "")):
                    continue
                if m.isdir():
                    self.dir(name, m.mode)
                elif m.issym():
                    self.link(name, m.linkname)
                elif m.islnk():
                    self.file(name, files[merged(m.linkname)], m.mode)
                elif m.isfile():
                    data = t.extractfile(m).read()
                    files[name] = data
                    self.file(name, data, m.mode)

    def bytes(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def merged(name):
    name = name.lstrip("./").rstrip("/")
    top = name.split("/", 1)[0]
    return "usr/" + name if top in MERGED else name


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return "sha256:" + digest


def write(out, name, layers, image_config):
    """Writes LAYERS as image NAME (with IMAGE_CONFIG, the OCI config's
    "config") to the archive OUT; returns the manifest's digest and the
    compressed and unpacked sizes."""
    blobs, descs, diff_ids = {}, [], []
    for layer in layers:
        raw = layer.bytes()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": blob(blobs, gz), "size": len(gz)})
    config = {
        "architecture": "amd64", "os": "linux", "created": CREATED,
        "config": dict({"Env": [PATH_ENV], "WorkingDir": "/"}, **image_config),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "scripts/image.py"} for _ in layers],
    }
    cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": blob(blobs, cfg), "size": len(cfg)},
                "layers": descs}
    man = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = blob(blobs, man)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": digest, "size": len(man),
                            "annotations": {"io.containerd.image.name": name,
                                            "org.opencontainers.image.ref.name": tag}}]}
    # docker load reads manifest.json; OCI readers read index.json.
    docker = [{"Config": "blobs/sha256/" + manifest["config"]["digest"][7:], "RepoTags": [name],
               "Layers": ["blobs/sha256/" + d["digest"][7:] for d in descs]}]
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps(index, sort_keys=True).encode(),
             "manifest.json": json.dumps(docker, sort_keys=True).encode()}
    for d, data in blobs.items():
        files["blobs/sha256/" + d] = data
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            t.addfile(ti)
        for n in sorted(files):
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode, ti.mtime = len(files[n]), 0o644, MTIME
            t.addfile(ti, io.BytesIO(files[n]))
    os.replace(tmp, out)
    return digest, sum(d["size"] for d in descs), sum(len(layer.bytes()) for layer in layers)


def version(root):
    """The workspace's version, from the root Cargo.toml."""
    text = open(os.path.join(root, "Cargo.toml")).read()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(root, "target", "release", "kproxy"))
    ap.add_argument("--install-as", default="/usr/local/bin/kproxy")
    ap.add_argument("--name", default=f"localhost/kproxy:{version(root)}")
    ap.add_argument("--out", default="kproxy-image.tar")
    ap.add_argument("--debs", default=os.path.expanduser("~/.cache/kproxy-image/debs"))
    ap.add_argument("--print-name", action="store_true",
                    help="print the image's name (the default, or --name) and exit")
    args = ap.parse_args()
    if args.print_name:
        print(args.name)
        return
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"image.py: no kproxy binary at {args.binary} (cargo build --release -p kproxy-bin)")

    pkgs = versions(closure(ROOTS))
    debs = download(pkgs, args.debs)
    base = Layer()
    for d in ("tmp", "run", "var/lib/kproxy", "etc", "proc", "sys", "dev"):
        base.dir(d, 0o1777 if d == "tmp" else 0o755)
    for top in MERGED:
        base.link(top, "usr/" + top)
    for pkg in sorted(debs):
        base.deb(debs[pkg])
    # Debian's update-alternatives would do this at install time: iptables
    # is the nft flavour, as on Debian 12 (kproxy itself names the flavour).
    for tool in ("iptables", "iptables-save", "iptables-restore",
                 "ip6tables", "ip6tables-save", "ip6tables-restore"):
        base.link("usr/sbin/" + tool, tool.replace("tables", "tables-nft", 1))
    listing = "".join(f"{p} {v}\n" for p, v in sorted(pkgs.items())).encode()
    base.file("usr/share/kproxy/packages.txt", listing)
    app = Layer()
    with open(args.binary, "rb") as f:
        app.file(args.install_as, f.read(), 0o755)
    labels = {"org.opencontainers.image.title": os.path.basename(args.install_as),
              "org.opencontainers.image.version": args.name.rsplit(":", 1)[-1]}
    config = {"Entrypoint": [args.install_as], "Labels": labels}
    digest, packed, unpacked = write(args.out, args.name, [base, app], config)
    sys.stderr.write(listing.decode())
    print(f"image.py: {args.name} -> {args.out}: {len(pkgs)} Debian packages, "
          f"{packed / 2**20:.1f} MiB compressed, {unpacked / 2**20:.1f} MiB unpacked")
    print(digest)


if __name__ == "__main__":
    main()
