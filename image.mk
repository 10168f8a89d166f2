# image.mk: `make image` builds the Dockerfile with buildah and writes an OCI archive,
# build/flannel-guard-<version>.oci.tar, that `podman load`, `docker load` and
# `kind load image-archive` take. Included by the Makefile. Needs root (buildah,
# mmdebstrap: Debian packages in system.mk), no daemon, no image registry, no
# package index inside the build:
#
#   make wheels        build/wheels/: the package and every pinned dependency as
#                      wheels, plus pip's own (pip wheel -c constraints.txt)
#   make image-base    a Debian 12 base image made by mmdebstrap from this machine's
#                      apt sources (python3 and the Essential packages), imported
#                      into buildah's storage; cached under build/ by its inputs
#   make image         buildah bud --isolation chroot, storage driver vfs, then
#                      push to the OCI archive
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

.PHONY: wheels image-base image

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

image: $(IMAGE_ARCHIVE)

$(IMAGE_ARCHIVE): Dockerfile .dockerignore $(WHEELS_STAMP) $(IMAGE_BASE_DEP) | debs
	$(BUILDAH) bud --quiet --isolation chroot $(IMAGE_PULL) --build-arg BASE=$(IMAGE_FROM) \
		--label org.opencontainers.image.version=$(IMAGE_TAG) \
		-t localhost/flannel-guard-build:$(IMAGE_TAG) -f Dockerfile .
	rm -f $@.tmp
	$(BUILDAH) push --quiet localhost/flannel-guard-build:$(IMAGE_TAG) \
		oci-archive:$(abspath $@.tmp):$(IMAGE_REPO):$(IMAGE_TAG)
	$(BUILDAH) rmi localhost/flannel-guard-build:$(IMAGE_TAG) >/dev/null
	mv -f $@.tmp $@
	@echo "$@: $(IMAGE_REPO):$(IMAGE_TAG)"
