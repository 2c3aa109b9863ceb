"""The template's files are Jinja templates, not tests: ood_zoo's own session skips them."""

collect_ignore = ["{{cookiecutter.distribution}}"]
