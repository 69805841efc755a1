"""Reads SWORD Bible modules as clean plain text, one string per verse.

The modules are the ones Debian packages (`sword-text-sparv`, `sword-text-web`);
`mod2imp` from `libsword-utils` exports a module in the "imp" text format:

    $$$Genesis 1:1
    <w lemma="strong:H7225">EN el principio</w> <w ...>crió</w> ...

Each `$$$Book C:V` line is followed by that verse's OSIS markup. Like every
SWORD tool, `mod2imp` also looks for modules under the directory named by the
`SWORD_PATH` environment variable, which it inherits from this process.
"""

import html
import pathlib
import re
import subprocess

VerseKey = tuple[str, int, int]

INSTALL_HINT = 'sudo apt-get install sword-text-sparv sword-text-web libsword-utils'

_HEADER = re.compile(r'^\$\$\$(.+) (\d+):(\d+)\s*$')
# engWEB2015eb appends its glossary to Revelation 22:21, after the book's end.
_BOOK_END = re.compile(r'<div(?=[^>]*\beID=)(?=[^>]*\btype="book")[^>]*>')
_TAG = re.compile(r'<(/?)([A-Za-z][\w:-]*)([^>]*?)(/?)>')

# Elements whose text is not part of the verse: footnotes and cross references,
# section headings, and the speaker labels of the Song of Solomon.
_HIDDEN_ELEMENTS = frozenset({'note', 'title', 'speaker'})
# Word-level wrappers: their tags are not word boundaries, so `<w>Yahweh</w>’s`
# must stay `Yahweh’s`. Every other tag (line, paragraph, quotation, list
# item...) separates words.
_INLINE_TAG = re.compile(r'</?(?:w|hi|divineName|foreign|seg|name)\b[^>]*>')
# spaRV1909eb marks words the translators added with <transChange>, usually
# whole words glued to the previous one (`esposa</w><transChange>mía`), so the
# tag separates words. An added enclitic pronoun glued to a verb-like word (an
# infinitive or imperative in -r/-d, or a form with a written accent) belongs
# to it: `sáca</w><transChange>lo` is `sácalo`, but `Josué los`, `que la`.
_ADDED_ENCLITIC = re.compile(
    r'\b((?=[a-záéíóúüñ]{3})[a-záéíóúüñ]*(?:[áéíóú][a-záéíóúüñ]*|[rd]))'
    r'(?:</w>)?<transChange\b[^>]*>(l[aeo]s?|[mts]e|n?os)</transChange>'
)
_SPACE_BEFORE_PUNCTUATION = re.compile(r'\s+([,.;:!?”»)\]])')
_SPACE_AFTER_OPENING = re.compile(r'([“‘«(\[¿¡])\s+')


class SwordModuleMissingError(RuntimeError):
  """A SWORD module, or the `mod2imp` tool that exports it, is not installed."""

  def __init__(self, module: str, reason: str):
    super().__init__(
        f'SWORD module {module!r} is not available: {reason}. Install the '
        f'modules and tools with: {INSTALL_HINT}'
    )
    self.module = module


def _is_hidden(name: str, attrs: str) -> bool:
  # Psalm superscriptions are marked as canonical titles; they are translated
  # text (the Spanish module has them inline in verse 1), so they stay.
  return name in _HIDDEN_ELEMENTS and 'canonical="true"' not in attrs


def clean_markup(markup: str) -> str:
  """Returns the plain text of one verse's OSIS markup.

  Footnotes, cross references and headings are dropped with their content,
  Strong's `<w lemma=...>` wrappers are dropped but their words kept, XML
  entities are unescaped and whitespace is normalised.
  """
  book_end = _BOOK_END.search(markup)
  if book_end:
    markup = markup[:book_end.start()]
  if '<transChange' in markup:  # Checked first: the regex is slow to scan.
    markup = _ADDED_ENCLITIC.sub(r'\1\2 ', markup)
  markup = _INLINE_TAG.sub('', markup)
  pieces = []
  hidden_stack = []
  position = 0
  for tag in _TAG.finditer(markup):
    if not hidden_stack:
      pieces.append(markup[position:tag.start()])
    position = tag.end()
    closing, name, attrs, self_closing = tag.groups()
    if hidden_stack:
      if closing and name == hidden_stack[-1]:
        hidden_stack.pop()
      elif not closing and not self_closing and name in _HIDDEN_ELEMENTS:
        hidden_stack.append(name)
      continue
    if not closing and not self_closing and _is_hidden(name, attrs):
      hidden_stack.append(name)
    pieces.append(' ')
  if not hidden_stack:
    pieces.append(markup[position:])
  text = ' '.join(html.unescape(''.join(pieces)).split())
  text = _SPACE_BEFORE_PUNCTUATION.sub(r'\1', text)
  return _SPACE_AFTER_OPENING.sub(r'\1', text)


def parse_imp(imp_text: str) -> dict[VerseKey, str]:
  """Parses `mod2imp` output into `{(book, chapter, verse): clean_text}`.

  Module, testament, book and chapter headings (`[ Module Heading ]`, verse or
  chapter number 0) are skipped, and so are verses with no text left after
  cleaning. The dict keeps the module's verse order.
  """
  verses = {}
  key, lines = None, []

  def flush():
    if key is not None:
      text = clean_markup('\n'.join(lines))
      if text:
        verses[key] = text

  for line in imp_text.splitlines():
    if line.startswith('$$$'):
      flush()
      header = _HEADER.match(line)
      key, lines = None, []
      if header and int(header[2]) > 0 and int(header[3]) > 0:
        key = (header[1], int(header[2]), int(header[3]))
    else:
      lines.append(line)
  flush()
  return verses


def export_module(module: str) -> str:
  """Returns `mod2imp MODULE` output, raising SwordModuleMissingError if absent."""
  try:
    result = subprocess.run(
        ['mod2imp', module], capture_output=True, encoding='utf-8', check=False
    )
  except FileNotFoundError:
    raise SwordModuleMissingError(
        module, 'the `mod2imp` tool is not installed'
    ) from None
  if result.returncode != 0 or "Couldn't find module" in result.stdout:
    raise SwordModuleMissingError(
        module, f'`mod2imp {module}` exited with status {result.returncode}'
    )
  return result.stdout


def load_module(
    module: str, imp_dir: str | pathlib.Path | None = None
) -> dict[VerseKey, str]:
  """Returns the clean verses of a SWORD module.

  Args:
    module: SWORD module name, e.g. `spaRV1909eb`.
    imp_dir: if given, read `<imp_dir>/<module>.imp` (text in `mod2imp`'s
      format) instead of running `mod2imp`; tests use it for small fixtures.

  Raises:
    SwordModuleMissingError: the module (or `mod2imp`) is not installed, or
      it holds no verse text.
  """
  if imp_dir is None:
    imp_text = export_module(module)
  else:
    path = pathlib.Path(imp_dir) / f'{module}.imp'
    if not path.is_file():
      raise SwordModuleMissingError(module, f'{path} does not exist')
    imp_text = path.read_text(encoding='utf-8')
  verses = parse_imp(imp_text)
  if not verses:
    raise SwordModuleMissingError(module, 'it exported no verse text')
  return verses
