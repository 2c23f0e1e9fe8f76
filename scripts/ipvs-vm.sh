#!/usr/bin/env bash
# Runs a command as root inside a qemu VM whose kernel has IPVS (and dummy
# interfaces), and exits with the command's status.
#
#   scripts/ipvs-vm.sh COMMAND [ARGS...]
#
# The machines' own kernel has neither, so the IPVS backend's kernel tests
# run here. The guest is Debian's stock kernel (software emulation: KVM is
# not usable on these machines) with a small busybox initramfs that loads
# the modules and then chroots into the HOST'S ROOT FILESYSTEM, mounted
# read-only over 9p: the command sees the same binaries, libraries, Python
# and paths as on the host, with fresh tmpfs on /run, /var/tmp and /root
# (TMPDIR=/var/tmp; /tmp is the host's, read-only). The VM has no network
# device at all, so nothing it does reaches
# the host's network; tests make their own namespaces inside it.
#
# Nothing is installed on the host: Debian's kernel, busybox, kmod and qemu
# packages are downloaded (apt-get download) and unpacked into a cache,
# $KPROXY_VM_DIR (default ~/.cache/kproxy-vm). Needs root, `apt-get update`
# done once, and the current directory readable by the guest.
#
# Environment: KPROXY_VM_TIMEOUT (seconds, default 1800), KPROXY_VM_MEM
# (MiB, default 2048), KPROXY_VM_CPUS (default 2), KPROXY_VM_ENV (names of
# host variables to pass on, space-separated; RUST_LOG, RUST_BACKTRACE, CI
# and KPROXY_* are always passed).
set -euo pipefail
if [ $# = 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
W=${KPROXY_VM_DIR:-$HOME/.cache/kproxy-vm}
mkdir -p "$W/debs"

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
    echo "ipvs-vm: apt knows no linux-image-amd64 (run apt-get update)" >&2
    exit 1
fi
kver=${kpkg#linux-image-}
R=$W/root-$kver

# 1. Packages, downloaded and unpacked, never installed. qemu's libraries:
# whatever of its dependency closure this machine lacks.
if [ ! -e "$R/.done" ]; then
    echo "ipvs-vm: fetching $kpkg, busybox, kmod and qemu into $W" >&2
    missing=()
    for p in $(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances qemu-system-x86 | grep -v '^[ <]' | sort -u); do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    rm -rf "$W/debs" "$R" && mkdir -p "$W/debs" "$R"
    (cd "$W/debs" && apt-get download -q "$kpkg" busybox-static kmod "${missing[@]}" 2>&1 | grep -v -e '^Get:' -e unsandboxed >&2 || true)
    for d in "$W"/debs/*.deb; do dpkg-deb -x "$d" "$R"; done
    rm -rf "$W/debs"
    touch "$R/.done"
fi
qemu=$R/usr/bin/qemu-system-x86_64
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu
if ldd "$qemu" | grep -q 'not found'; then
    echo "ipvs-vm: qemu lacks libraries: $(ldd "$qemu" | awk '/not found/ {print $1}' | tr '\n' ' ')" >&2
    exit 1
fi

# 2. The kernel, uncompressed: qemu then boots it through its PVH entry and
# skips decompressing under emulation.
vmlinux=$W/vmlinux-$kver
if [ ! -s "$vmlinux" ]; then
    off=$(LC_ALL=C grep -aobUP -m1 '\xFD7zXZ\x00' "$R/boot/vmlinuz-$kver" | awk -F: 'NR == 1 {print $1}')
    (tail -c +$((off + 1)) "$R/boot/vmlinuz-$kver" || true) | xz -dc --single-stream > "$vmlinux.tmp"
    mv "$vmlinux.tmp" "$vmlinux"
fi

# 3. The initramfs: busybox, the modules (with their dependencies) and init.
initrd=$W/initramfs-$kver.cpio.gz
if [ ! -s "$initrd" ] || [ "$0" -nt "$initrd" ]; then
    tools=$W/tools && mkdir -p "$tools"
    for t in depmod modprobe; do ln -sf "$R/bin/kmod" "$tools/$t"; done
    S=$W/stage && rm -rf "$S" && mkdir -p "$S"/{bin,sbin,proc,sys,dev,newroot,lib/modules}
    cp "$R/bin/busybox" "$S/bin/"
    for a in $("$S/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf /bin/busybox "$S/bin/$a"; done
    ln -sf /bin/busybox "$S/sbin/modprobe" # the kernel's request_module()
    "$tools/depmod" -b "$R" "$kver"
    m=$R/lib/modules/$kver/kernel
    mods="virtio_pci virtio_mmio 9pnet_virtio 9p dummy veth bridge br_netfilter
        $(find "$m/net/netfilter" "$m/net/ipv4/netfilter" "$m/net/ipv6/netfilter" -name '*.ko*' -printf '%f\n' | sed 's/\.ko.*$//')"
    for mod in $mods; do "$tools/modprobe" -d "$R" -S "$kver" --show-depends "$mod" 2>/dev/null || true; done |
        awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
            rel=${ko#"$R"}
            mkdir -p "$S$(dirname "$rel")"
            cp "$ko" "$S$rel"
        done
    cp "$R/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$S/lib/modules/$kver/"
    "$tools/depmod" -b "$S" "$kver"
    cat > "$S/init" <<'EOF'
#!/bin/sh
# Guest init: load modules, mount the host's root read-only, run the command.
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p; do modprobe $m; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose host /newroot || { echo "ipvs-vm: cannot mount the host's root"; poweroff -f; }
N=/newroot
# /tmp stays the host's (read-only): the command may live there. TMPDIR
# points at a writable tmpfs instead.
for d in run var/tmp root; do mount -t tmpfs -o mode=1777 tmpfs $N/$d; done
chmod 700 $N/root
mount -t proc proc $N/proc; mount -t sysfs sys $N/sys; mount -t devtmpfs dev $N/dev
mkdir -p $N/dev/pts $N/dev/shm; mount -t devpts devpts $N/dev/pts; mount -t tmpfs tmpfs $N/dev/shm
# Modules load from the initramfs (the kernel's modprobe runs there); the
# host's /lib/modules, if any, is not the guest kernel's.
[ -d $N/lib/modules ] && mount --bind /lib/modules $N/lib/modules
mkdir -p $N/run/kproxy-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out $N/run/kproxy-vm
for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_sh ip_vs_dh ip_vs_sed ip_vs_nq ip_vs_mh \
    veth bridge nf_conntrack nf_conntrack_netlink nf_nat nf_tables nft_compat ip_tables iptable_nat iptable_filter \
    ip6_tables ip6table_nat ip6table_filter ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip \
    ip_set_hash_ipportnet ip_set_hash_net ip_set_bitmap_port xt_set; do
    modprobe $m || echo "ipvs-vm: modprobe $m failed"
done
modprobe dummy numdummies=0 || echo "ipvs-vm: modprobe dummy failed"
echo "ipvs-vm: guest up at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
chroot $N /bin/sh /run/kproxy-vm/run.sh
echo $? > $N/run/kproxy-vm/rc
sync
umount $N/run/kproxy-vm
poweroff -f
EOF
    chmod +x "$S/init"
    (cd "$S" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$S"
fi

# 4. The command, as a script in a directory shared read-write.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
{
    echo "cd $(printf %q "$PWD")"
    echo "export PATH=$(printf %q "$PATH") HOME=/root TMPDIR=/var/tmp KPROXY_IN_VM=1"
    for v in $(compgen -e); do
        case "$v" in
        RUST_LOG | RUST_BACKTRACE | CI | KPROXY_*) ;;
        *) case " ${KPROXY_VM_ENV:-} " in *" $v "*) ;; *) continue ;; esac ;;
        esac
        echo "export $v=$(printf %q "${!v}")"
    done
    printf '%q ' "$@"
    echo
} > "$out/run.sh"

# 5. Boot. No network device (-nodefaults, no -netdev): the guest's only
# links to the host are the two 9p shares and the serial console.
start=$SECONDS
timeout --foreground -k 5 "${KPROXY_VM_TIMEOUT:-1800}" "$qemu" \
    -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" -machine q35 -accel tcg -cpu max \
    -smp "${KPROXY_VM_CPUS:-2}" -m "${KPROXY_VM_MEM:-2048}" \
    -nographic -nodefaults -no-reboot -serial stdio \
    -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap,id=host" \
    -virtfs "local,path=$out,mount_tag=out,security_model=none,id=out" \
    -kernel "$vmlinux" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet loglevel=3" </dev/null ||
    echo "ipvs-vm: qemu exited with $? after $((SECONDS - start)) s" >&2
if [ ! -s "$out/rc" ]; then
    echo "ipvs-vm: the guest ended without the command's status (crash or timeout after $((SECONDS - start)) s)" >&2
    exit 1
fi
rc=$(cat "$out/rc")
echo "ipvs-vm: command exited with $rc after $((SECONDS - start)) s in the VM" >&2
exit "$rc"
