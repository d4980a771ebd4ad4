"""One module per image of the stack, each defining ``IMAGE``: an
:class:`~kilosort_docker.images.spec.ImageSpec` that carries what makes the image different
(build args, how its context is staged, its checks, its tags and labels, its size budget).
Adding an image means one module here, one ``docker/<name>/`` folder, and one line in
:data:`kilosort_docker.images.stack.STACK`.
"""
