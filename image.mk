# image.mk: `make image` builds the Dockerfile with buildah and writes an OCI archive,
# build/flannel-guard-<version>.oci.tar, that `podman load`, `docker load` and
# `kind load image-archive` take. The archive holds an OCI image index with
# linux/amd64 (the Dockerfile) and linux/arm64 (image/foreign-root.sh: the same
# steps done from outside, since nothing arm64 can run here: binfmt_misc is not
# mounted and is left alone). Included by the Makefile. Needs root (buildah,
# mmdebstrap: Debian packages in system.mk), no daemon, no image registry, no
# package index inside the build:
#
#   make wheels        build/wheels/: the package and every pinned dependency as
#                      wheels, plus pip's own (pip wheel -c constraints.txt)
#   make image-base    a Debian 12 base image made by mmdebstrap from this machine's
#                      apt sources (python3 and the Essential packages), imported
#                      into buildah's storage; cached under build/ by its inputs
#   make wheels-arm64  build/wheels-arm64/: the same pins as aarch64 wheels
#                      (pip download --platform ... --only-binary=:all:)
#   make image-arm64   build/image/root-arm64-*.tar: mmdebstrap --arch=arm64
#                      --variant=extract (no maintainer script runs) plus the
#                      wheels installed by pip --platform --target; committed
#                      by buildah from scratch as linux/arm64
#   make image         buildah bud --isolation chroot, storage driver vfs (amd64),
#                      then both in one manifest list pushed to the OCI archive
#   make image IMAGE_ARCHS=amd64                         amd64 alone
#
#   make image IMAGE_BASE=python:3.11.14-slim-bookworm   a registry base instead
#   make image IMAGE_TAG=0.1.0-rc1                       another tag
#
# buildah keeps its own storage under build/containers (not the system's), so a
# `make clean` removes everything this wrote.

IMAGE_REPO    ?= ghcr.io/flannel-guard/flannel-guard
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG     ?= $(IMAGE_VERSION)
IMAGE_ARCHIVE ?= build/flannel-guard-$(IMAGE_TAG).oci.tar
# "mmdebstrap": build the base from Debian's packages; anything else is an image reference.
IMAGE_BASE    ?= mmdebstrap
IMAGE_SUITE   ?= bookworm
IMAGE_APT_SOURCES ?= $(firstword $(wildcard /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list))

BUILDAH := buildah --root $(abspath build/containers/storage) \
	--runroot $(abspath build/containers/run) --storage-driver vfs

# The base is keyed by what makes it: the suite, the package list and the apt sources.
MMDEBSTRAP_ARGS := --variant=essential --include=python3 \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --format=tar $(IMAGE_SUITE)
BASE_KEY := $(shell { echo '$(MMDEBSTRAP_ARGS)'; cat $(IMAGE_APT_SOURCES) 2>/dev/null; } \
	| sha256sum | cut -c1-12)
BASE_TAR := build/image/base-$(IMAGE_SUITE)-$(BASE_KEY).tar
BASE_REF := localhost/flannel-guard-base:$(IMAGE_SUITE)-$(BASE_KEY)
BASE_STAMP := build/image/base-$(IMAGE_SUITE)-$(BASE_KEY).imported

ifeq ($(IMAGE_BASE),mmdebstrap)
IMAGE_FROM := $(BASE_REF)
IMAGE_BASE_DEP := $(BASE_STAMP)
IMAGE_PULL := --pull-never
else
IMAGE_FROM := $(IMAGE_BASE)
IMAGE_BASE_DEP :=
IMAGE_PULL :=
endif

WHEELS_STAMP := build/.wheels-stamp
IMAGE_SOURCES := pyproject.toml constraints.txt README.md $(shell find webhook -name '*.py')

# IMAGE_ARCHS: amd64 (built by the Dockerfile: this machine's own) and arm64 (assembled).
IMAGE_ARCHS   ?= amd64 arm64
ARM64_MMDEBSTRAP_ARGS := --arch=arm64 --variant=extract --include=python3 \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --format=tar $(IMAGE_SUITE)
ARM64_KEY := $(shell { echo '$(ARM64_MMDEBSTRAP_ARGS)'; cat $(IMAGE_APT_SOURCES) 2>/dev/null; } \
	| sha256sum | cut -c1-12)
ARM64_BASE_TAR := build/image/base-arm64-$(IMAGE_SUITE)-$(ARM64_KEY).tar
ARM64_ROOT_TAR := build/image/root-arm64-$(IMAGE_SUITE)-$(ARM64_KEY).tar
ARM64_WHEELS_STAMP := build/.wheels-arm64-stamp
# pip (23) takes manylinux platforms one by one: every glibc up to Debian 12's 2.36.
ARM64_PLATFORMS := $(foreach v,$(shell seq 36 -1 17),--platform manylinux_2_$(v)_aarch64) \
	--platform manylinux2014_aarch64
IMAGE_DEPS := image.mk $(if $(filter amd64,$(IMAGE_ARCHS)),Dockerfile .dockerignore $(WHEELS_STAMP) $(IMAGE_BASE_DEP)) \
	$(if $(filter arm64,$(IMAGE_ARCHS)),$(ARM64_ROOT_TAR))

.PHONY: wheels wheels-arm64 image-base image-arm64 image krew

wheels: $(WHEELS_STAMP)

$(WHEELS_STAMP): $(IMAGE_SOURCES) | $(STAMP)
	@# setuptools builds in build/lib: clear it, or a module deleted since would ship.
	rm -rf build/wheels.tmp build/lib build/bdist.* && mkdir -p build/wheels.tmp
	$(BIN)/pip wheel --quiet --disable-pip-version-check -c constraints.txt \
		--wheel-dir build/wheels.tmp . pip
	rm -rf build/wheels && mv build/wheels.tmp build/wheels
	touch $@

image-base: $(IMAGE_BASE_DEP)

$(BASE_TAR): | debs
	@test -n "$(IMAGE_APT_SOURCES)" || { echo "no apt sources file for mmdebstrap"; exit 1; }
	mkdir -p build/image
	mmdebstrap --quiet $(MMDEBSTRAP_ARGS) $@.tmp $(IMAGE_APT_SOURCES)
	mv -f $@.tmp $@

$(BASE_STAMP): $(BASE_TAR)
	ctr=$$($(BUILDAH) from scratch) && \
	$(BUILDAH) add --quiet $$ctr $(BASE_TAR) / && \
	$(BUILDAH) config --cmd '["/usr/bin/python3"]' \
		--label org.opencontainers.image.description="Debian $(IMAGE_SUITE) with python3 (mmdebstrap)" $$ctr && \
	$(BUILDAH) commit --quiet --rm $$ctr $(BASE_REF)
	touch $@

wheels-arm64: $(ARM64_WHEELS_STAMP)

# Downloads are kept in build/wheels-arm64 (pip reuses a file already there); the
# package's own wheel comes from build/wheels.
$(ARM64_WHEELS_STAMP): $(WHEELS_STAMP)
	mkdir -p build/wheels-arm64 && rm -f build/wheels-arm64/flannel_guard-*.whl
	$(BIN)/pip download --quiet --disable-pip-version-check $(ARM64_PLATFORMS) --python-version 3.11 \
		--implementation cp --abi cp311 --abi abi3 --abi none --only-binary=:all: \
		-c constraints.txt -d build/wheels-arm64 build/wheels/flannel_guard-*.whl
	touch $@

$(ARM64_BASE_TAR): | debs
	@test -n "$(IMAGE_APT_SOURCES)" || { echo "no apt sources file for mmdebstrap"; exit 1; }
	mkdir -p build/image
	mmdebstrap --quiet $(ARM64_MMDEBSTRAP_ARGS) $@.tmp $(IMAGE_APT_SOURCES)
	mv -f $@.tmp $@

$(ARM64_ROOT_TAR): $(ARM64_BASE_TAR) $(ARM64_WHEELS_STAMP) image/foreign-root.sh
	HOST_PYTHON=$(BIN)/python sh image/foreign-root.sh arm64 $(ARM64_BASE_TAR) build/wheels-arm64 $@

image-arm64: $(ARM64_ROOT_TAR)

image: $(IMAGE_ARCHIVE)

# Each architecture's image goes into buildah's storage, then a manifest list names both;
# `manifest push --all` writes the index and every image into the archive.
IMAGE_BUILD := localhost/flannel-guard-build:$(IMAGE_TAG)
IMAGE_LIST  := localhost/flannel-guard-list:$(IMAGE_TAG)

$(IMAGE_ARCHIVE): $(IMAGE_DEPS) | debs
	-$(BUILDAH) manifest rm $(IMAGE_LIST) >/dev/null 2>&1
	$(BUILDAH) manifest create $(IMAGE_LIST) >/dev/null
ifneq ($(filter amd64,$(IMAGE_ARCHS)),)
	$(BUILDAH) bud --quiet --isolation chroot $(IMAGE_PULL) --build-arg BASE=$(IMAGE_FROM) \
		--label org.opencontainers.image.version=$(IMAGE_TAG) \
		-t $(IMAGE_BUILD)-amd64 -f Dockerfile . >/dev/null
	$(BUILDAH) manifest add $(IMAGE_LIST) containers-storage:$(IMAGE_BUILD)-amd64 >/dev/null
endif
ifneq ($(filter arm64,$(IMAGE_ARCHS)),)
	ctr=$$($(BUILDAH) from --arch arm64 --os linux scratch) && \
	$(BUILDAH) add --quiet $$ctr $(ARM64_ROOT_TAR) / && \
	$(BUILDAH) config --arch arm64 --os linux --user 65532:65532 \
		--env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 --env HOME=/tmp \
		--port 9643/tcp --port 9644/tcp --entrypoint '["flannel-guard"]' --cmd '["serve", "--in-cluster"]' \
		--label org.opencontainers.image.version=$(IMAGE_TAG) $$ctr && \
	$(BUILDAH) commit --quiet --rm $$ctr $(IMAGE_BUILD)-arm64 >/dev/null
	$(BUILDAH) manifest add --arch arm64 --os linux $(IMAGE_LIST) containers-storage:$(IMAGE_BUILD)-arm64 >/dev/null
endif
	rm -f $@.tmp
	$(BUILDAH) manifest push --quiet --all $(IMAGE_LIST) \
		oci-archive:$(abspath $@.tmp):$(IMAGE_REPO):$(IMAGE_TAG)
	$(BUILDAH) manifest rm $(IMAGE_LIST) >/dev/null
	$(BUILDAH) rmi $(foreach a,$(IMAGE_ARCHS),$(IMAGE_BUILD)-$(a)) >/dev/null
	mv -f $@.tmp $@
	@echo "$@: $(IMAGE_REPO):$(IMAGE_TAG) ($(IMAGE_ARCHS))"

# make krew: the kubectl plugin's archives, one per platform (the launcher and that platform's
# wheels), and build/krew/flannel-guard.yaml, the manifest with their sha256. Reproducible:
# sorted, dated 0, owned by root, gzip without a name or time.
KREW_VERSION := v$(IMAGE_VERSION)
KREW_ARCHIVES := $(foreach a,amd64 arm64,build/krew/kubectl-flannel_guard-$(KREW_VERSION)-linux-$(a).tar.gz)

krew: build/krew/flannel-guard.yaml

build/krew/kubectl-flannel_guard-$(KREW_VERSION)-linux-%.tar.gz: plugins/kubectl-flannel_guard $(WHEELS_STAMP) $(ARM64_WHEELS_STAMP)
	rm -rf build/krew/stage-$* && mkdir -p build/krew/stage-$*/wheels
	cp plugins/kubectl-flannel_guard build/krew/stage-$*/
	cp $(if $(filter amd64,$*),build/wheels,build/wheels-arm64)/*.whl build/krew/stage-$*/wheels/
	tar -C build/krew/stage-$* --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . \
		| gzip -n > $@.tmp
	rm -rf build/krew/stage-$* && mv -f $@.tmp $@

build/krew/flannel-guard.yaml: plugins/flannel-guard.yaml plugins/krew_manifest.py $(KREW_ARCHIVES)
	$(BIN)/python plugins/krew_manifest.py $@ $(KREW_ARCHIVES)
