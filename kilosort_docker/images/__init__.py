"""The image stack: the table of images, profiles, pins, tags, build plans, builds, pushes and
the checks that run inside the built images."""
