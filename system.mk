# system.mk: Debian packages that some tests start for real (an OCI builder, Prometheus,
# Chromium, ...). Included by the Makefile; `make test` installs whichever are missing,
# once, with apt-get (as root, or through sudo). Each feature adds its own line:
#
#   DEB_PACKAGES += buildah
#
# The stamp records the list that was installed: adding a package reruns the step.

DEB_PACKAGES ?=
# make image, tests/test_image.py: the OCI builder and the Debian base it builds on.
DEB_PACKAGES += buildah
DEB_PACKAGES += mmdebstrap
# tests/test_image.py: the arm64 image run by user-mode emulation (-L on its root, no binfmt).
DEB_PACKAGES += qemu-user-static
# tests/test_prometheus.py: promtool check/test rules, and a real server scraping ours.
DEB_PACKAGES += prometheus
DEB_PACKAGES += chromium
DEB_STAMP := $(TOOLS_DIR)/.deb-packages

.PHONY: debs

debs: $(DEB_STAMP)

$(DEB_STAMP): system.mk
	@mkdir -p $(TOOLS_DIR)
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo "installing Debian packages:$$missing"; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@echo "$(DEB_PACKAGES)" > $@
