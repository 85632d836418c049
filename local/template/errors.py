"""The one exception of local.template: the template asks for what cannot be done locally."""

from __future__ import annotations


class TemplateError(ValueError):
    """The template asks for something this module cannot do locally, or is invalid."""
