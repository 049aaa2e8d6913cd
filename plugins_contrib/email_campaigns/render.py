"""Mail templates: Jinja2's sandbox, merge-field checks, HTML to text, link rewriting.

Templates are written by CRM users, so they run in :class:`ImmutableSandboxedEnvironment`
(no access to Python internals, no mutation of the context). The HTML part autoescapes every
merge field; the subject and the text part do not (they are not HTML). A template is checked
when the campaign is saved: a syntax error or an unknown merge field (``{{ recipient.nmae }}``)
refuses the save, so a send never fails halfway through because of a typo.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Top-level merge fields every campaign template may use (plugins add more: campaign_merge_fields).
OBJECT_FIELDS = {
    "owner": ("id", "display_name", "name", "email", "username"),
    "campaign": ("id", "name"),
}
SCALAR_FIELDS = ("unsubscribe_url", "language")

_html_env = ImmutableSandboxedEnvironment(autoescape=True, trim_blocks=False)
_text_env = ImmutableSandboxedEnvironment(autoescape=False, trim_blocks=False)


class TemplateProblem(ValueError):
    """A template that does not compile or uses an unknown merge field; the message says which."""


@lru_cache(maxsize=256)
def _compile(source: str, html: bool) -> Any:
    env = _html_env if html else _text_env
    return env.from_string(source)


def _parse(source: str) -> nodes.Template:
    try:
        return _html_env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"line {exc.lineno}: {exc.message}") from None


def check_template(source: str, recipient_fields: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """Problems of one template: syntax errors, unknown names, unknown ``recipient.x``/``owner.x``.

    ``recipient_fields`` are the merge fields of the audience's records; ``extra`` the top-level
    names plugins add. Returns messages (empty when the template is fine).
    """
    if not source:
        return []
    try:
        tree = _parse(source)
        _compile(source, True)  # unknown filters and tests fail at compile time
    except TemplateProblem as exc:
        return [str(exc)]
    except TemplateError as exc:
        return [str(exc)]
    allowed_objects = {"recipient": tuple(recipient_fields), **OBJECT_FIELDS}
    known = set(allowed_objects) | set(SCALAR_FIELDS) | set(extra) | set(_html_env.globals)
    problems = []
    for name in sorted(meta.find_undeclared_variables(tree) - known):
        problems.append(f"unknown merge field {name!r} (use {', '.join(sorted(known - set(_html_env.globals)))})")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in allowed_objects:
            continue
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attr = node.arg.value
        else:
            continue
        if attr not in allowed_objects[target.name]:
            problems.append(f"unknown merge field {target.name}.{attr} (line {node.lineno})")
    return list(dict.fromkeys(problems))


def render(source: str, context: Mapping[str, Any], *, html: bool) -> str:
    """Render a template in the sandbox; TemplateProblem when it fails (e.g. a sandbox violation)."""
    if not source:
        return ""
    try:
        return _compile(source, html).render(context)
    except (SecurityError, TemplateError) as exc:
        raise TemplateProblem(str(exc)) from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=256)
def _names(source: str) -> frozenset[str]:
    try:
        return frozenset(meta.find_undeclared_variables(_parse(source)))
    except TemplateProblem:
        return frozenset()


def uses_name(source: str, name: str) -> bool:
    """Whether a template refers to the top-level merge field ``name`` (e.g. ``unsubscribe_url``)."""
    return bool(source) and name in _names(source)


# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------
_HREF_RE = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_URL_RE = re.compile(r"""https?://[^\s<>"'()]+[^\s<>"'().,;:!?]""", re.IGNORECASE)


def trackable(url: str) -> bool:
    """Only web links are tracked: mailto:, tel:, anchors and relative paths are left alone."""
    return url.lower().startswith(("http://", "https://"))


def rewrite_html_links(html: str, replace: Callable[[str], str | None]) -> str:
    """Replace the ``href`` of each ``<a>`` whose URL ``replace`` returns a new URL for.

    ``replace`` receives the URL unescaped; the new one is escaped back into the attribute.
    """

    def sub(m: re.Match) -> str:
        url = htmllib.unescape(m.group(3)).strip()
        new = replace(url) if trackable(url) else None
        if new is None:
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{htmllib.escape(new, quote=True)}{m.group(2)}"

    return _HREF_RE.sub(sub, html)


def html_links(html: str) -> list[str]:
    """The trackable URLs of the ``<a href>`` links in ``html``, in order, without repeats."""
    urls = [htmllib.unescape(m.group(3)).strip() for m in _HREF_RE.finditer(html)]
    return list(dict.fromkeys(u for u in urls if trackable(u)))


def rewrite_text_links(text: str, replace: Callable[[str], str | None]) -> str:
    """Replace bare web URLs in a text part."""

    def sub(m: re.Match) -> str:
        new = replace(m.group(0))
        return m.group(0) if new is None else new

    return _URL_RE.sub(sub, text)


def text_links(text: str) -> list[str]:
    """The web URLs written in a text part."""
    return list(dict.fromkeys(m.group(0) for m in _URL_RE.finditer(text)))


# ---------------------------------------------------------------------------------------------
# HTML -> text
# ---------------------------------------------------------------------------------------------
_BLOCKS = {
    "p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "h1", "h2", "h3",
    "h4", "h5", "h6", "blockquote", "pre", "hr", "address", "center",
}
_SKIP = {"script", "style", "head", "title", "template"}


class _TextMaker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.links: list[tuple[str, int]] = []  # (href, position in out where the link text began)
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in _BLOCKS:
            self.out.append("\n\n")
            if tag == "pre":
                self.pre += 1
            if tag == "hr":
                self.out.append("-" * 20 + "\n\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP:
            self.skip -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCKS:
            self.out.append("\n\n")
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.out[start:]).strip()
            if href and trackable(href) and href != label:
                self.out.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML mail: paragraphs, line breaks, list items and
    links as ``label (url)``; scripts and styles dropped, entities decoded."""
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    text = "".join(maker.out)
    lines = [line.strip() for line in text.splitlines()]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


@dataclass(frozen=True)
class Rendered:
    """One message's rendered parts."""

    subject: str
    html: str | None
    text: str


def render_message(
    subject: str, html: str | None, text: str | None, context: Mapping[str, Any]
) -> Rendered:
    """Render a message's three parts; the text part is made from the HTML when not given."""
    subject_out = " ".join(render(subject or "", context, html=False).split())
    html_out = render(html, context, html=True) if html else None
    if text:
        text_out = render(text, context, html=False)
    elif html_out:
        text_out = html_to_text(html_out)
    else:
        text_out = ""
    return Rendered(subject_out, html_out, text_out)
