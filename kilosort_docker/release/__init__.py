"""Releases: Kilosort versions upstream, version bumps, and tagging a release."""
