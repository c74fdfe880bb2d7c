# The collector's image, built with a container engine:
#
#   docker build --build-arg VERSION=0.1.0 -t docker.io/local/collector:0.1.0 .
#
# `cargo xtask image` builds the same image without any engine
# (target/image/collector.tar, named docker.io/local/collector:<version>; see
# xtask/src/image.rs). Keep the two equivalent: the same files, chosen by the
# same rule (the binary and exactly the shared libraries ldd lists for it),
# and the same ENTRYPOINT, CMD, USER, ENV, WORKDIR and labels.

FROM debian:12 AS builder
ARG DEBIAN_FRONTEND=noninteractive
# rustup's cargo runs `cargo xtask setup`, which installs the rest (Debian's
# rustc-web linked as the eBPF toolchain, bpf-linker against LLVM 22, protoc).
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends build-essential ca-certificates curl \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain stable --no-modify-path
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
# The workspace, without target/ (every member of Cargo.toml's [workspace] must be here).
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY .cargo .cargo
COPY collector collector
COPY collector-common collector-common
COPY collector-ebpf collector-ebpf
COPY oci oci
COPY tests tests
COPY xtask xtask
RUN cargo xtask setup && cargo build --release --package collector
# The same rule as `cargo xtask image`: /usr/bin/collector and exactly the
# shared libraries ldd lists, the dynamic loader included, each at the path
# ldd reports (cp -L stores the file a symlink such as
# /lib64/ld-linux-x86-64.so.2 leads to under the symlink's path); a library
# ldd cannot find fails the build. Then root in /etc/passwd and /etc/group, a
# sticky /tmp and the empty mount points.
RUN set -eu; \
    bin=target/release/collector; out=/rootfs; \
    mkdir -p "$out/usr/bin" "$out/etc" "$out/tmp" "$out/proc" "$out/sys" "$out/dev" "$out/run" \
        "$out/var/lib/collector"; \
    chmod 0555 "$out/proc" "$out/sys"; \
    chmod 1777 "$out/tmp"; \
    cp "$bin" "$out/usr/bin/collector"; \
    ldd "$bin" > /tmp/ldd 2>&1 || grep -q 'not a dynamic executable' /tmp/ldd; \
    cat /tmp/ldd; \
    if grep 'not found' /tmp/ldd >&2; then echo 'shared libraries not found' >&2; exit 1; fi; \
    for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' /tmp/ldd); do \
        mkdir -p "$out$(dirname "$lib")"; \
        cp -L "$lib" "$out$lib"; \
    done; \
    printf 'root:x:0:0:root:/:/sbin/nologin\n' > "$out/etc/passwd"; \
    printf 'root:x:0:\n' > "$out/etc/group"; \
    find "$out" -exec ls -ld {} +

FROM scratch
# collector/Cargo.toml's version (`cargo xtask image` reads it from there).
ARG VERSION=0.1.0
COPY --from=builder /rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
LABEL org.opencontainers.image.title="collector" \
      org.opencontainers.image.version="${VERSION}"
# The daemon runs as uid 0, with every capability dropped but CAP_BPF and
# CAP_PERFMON (the DaemonSet's securityContext does that; an image cannot).
USER 0:0
ENTRYPOINT ["/usr/bin/collector"]
CMD ["run"]
