#!/usr/bin/env python3
"""Write the images Kubernetes' Services e2e specs run, built here instead of
pulled (the node harness has no registry), as OCI archives for
`ctr images import`, under the references the specs ask for
(test/utils/image/manifest.go at v1.34.4):

  pause     registry.k8s.io/pause:3.10.1                   the sandbox
  agnhost   registry.k8s.io/e2e-test-images/agnhost:2.56   agnhost, a shell
            (bash), busybox's applets, GNU wget, curl and netcat-openbsd
  busybox   registry.k8s.io/e2e-test-images/busybox:1.37.0-1

usage: images.py NODE_BIN OUT_DIR   (NODE_BIN: e2e/node/build.sh's output)
"""
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from image import Layer, write  # noqa: E402

IMAGES = {
    "pause": "registry.k8s.io/pause:3.10.1",
    "agnhost": "registry.k8s.io/e2e-test-images/agnhost:2.56",
    "busybox": "registry.k8s.io/e2e-test-images/busybox:1.37.0-1",
}


def copy(layer, src, dst=None, mode=0o755):
    with open(src, "rb") as f:
        layer.file(dst or src, f.read(), mode)


def with_libraries(layer, binary, dst):
    """A dynamically linked host binary and every library ldd names."""
    copy(layer, binary, dst)
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        words = line.split()
        lib = words[2] if "=>" in words and len(words) > 2 else words[0]
        if lib.startswith("/"):
            copy(layer, os.path.realpath(lib), lib)


def busybox(layer, skip=()):
    copy(layer, "/bin/busybox", "/bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if os.path.basename(applet) not in skip and applet.strip("/") not in layer.entries:
            layer.link(applet, "/bin/busybox")


def base(layer):
    for d, mode in (("tmp", 0o1777), ("etc", 0o755), ("proc", 0o755), ("sys", 0o755),
                    ("dev", 0o755), ("root", 0o700)):
        layer.dir(d, mode)
    # The users and groups upstream's images define (some specs run as them).
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
               b"user-defined-in-image:x:1000:1000::/home/user:/bin/sh\n")
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")
    layer.file("etc/nsswitch.conf", b"hosts: files dns\n")


def main():
    node_bin, out = sys.argv[1:3]
    os.makedirs(out, exist_ok=True)

    pause = Layer()
    copy(pause, os.path.join(node_bin, "pause"), "/pause")
    write(os.path.join(out, "pause.tar"), IMAGES["pause"], [pause], {"Entrypoint": ["/pause"]})

    box = Layer()
    base(box)
    busybox(box)
    write(os.path.join(out, "busybox.tar"), IMAGES["busybox"], [box], {"Cmd": ["sh"]})

    agn = Layer()
    base(agn)
    agn.dir("uploads")
    agn.dir("home/user")
    copy(agn, os.path.join(node_bin, "agnhost"), "/agnhost")
    agn.link("agnhost-2", "agnhost")
    with_libraries(agn, "/usr/bin/curl", "/usr/bin/curl")
    with_libraries(agn, "/usr/bin/nc.openbsd", "/usr/bin/nc")
    with_libraries(agn, "/usr/bin/bash", "/bin/bash")
    # Debian's busybox sh runs its own nc applet, so /bin/sh is bash for
    # "sh -c 'nc ...'" to reach netcat-openbsd, as in upstream's image; and
    # Debian's static busybox wget crashes, so wget is GNU wget (same flags).
    agn.link("bin/sh", "bash")
    with_libraries(agn, "/usr/bin/wget", "/usr/bin/wget")
    busybox(agn, skip=("nc", "bash", "curl", "sh", "wget"))
    write(os.path.join(out, "agnhost.tar"), IMAGES["agnhost"], [agn],
          {"Entrypoint": ["/agnhost"], "Cmd": ["pause"]})
    print(f"images.py: {', '.join(IMAGES.values())} -> {out}")


if __name__ == "__main__":
    main()
