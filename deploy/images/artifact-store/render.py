"""Render one of the vsftpd templates: render.py TEMPLATE OUTPUT MODE KEY=VALUE..."""

import os
import sys

import jinja2

template_name, output, mode, *pairs = sys.argv[1:]
values = dict(pair.split("=", 1) for pair in pairs)
environment = jinja2.Environment(loader=jinja2.FileSystemLoader("/usr/local/share/flops-artifact-store"),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
text = environment.get_template(template_name).render(**values)
fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, int(mode, 8))
with os.fdopen(fd, "w", encoding="utf-8") as handle:
    handle.write(text)
os.chmod(output, int(mode, 8))
