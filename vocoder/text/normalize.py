"""English text normalization for the text-to-mel front-end: numbers, money, units,
times, abbreviations and Unicode punctuation become lower-case spoken words that the
symbol set in `vocoder.text.symbols` can encode."""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

from anyascii import anyascii

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
         8: "eighty", 9: "ninety"}
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
# Past the trillions a digit string is an identifier rather than a quantity anyone says.
_MAX_CARDINAL = 10**15
_ORDINAL_LAST_WORD = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                      "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def _digits(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _below_thousand(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [_ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest:
        words.append(_ONES[rest])
    return words


def cardinal(n: int) -> str:
    """American cardinal words without "and": 123 -> "one hundred twenty three"."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n == 0:
        return "zero"
    if n >= _MAX_CARDINAL:
        return _digits(str(n))
    words: list[str] = []
    for value, name in _SCALES:
        count, n = divmod(n, value)
        if count:
            words += _below_thousand(count) + [name]
    return " ".join(words + _below_thousand(n))


def ordinal(n: int) -> str:
    """Ordinal words: 22 -> "twenty second", 100 -> "one hundredth"."""
    head, _, last = cardinal(n).rpartition(" ")
    if last in _ORDINAL_LAST_WORD:
        last = _ORDINAL_LAST_WORD[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".lstrip()


def year(n: int) -> str:
    """Year reading for 1000-2099: 1984 -> "nineteen eighty four", 1905 -> "nineteen oh
    five", 1900 -> "nineteen hundred", 2005 -> "two thousand five", 2024 -> "twenty
    twenty four"."""
    century, rest = divmod(n, 100)
    if n % 1000 == 0 or (century % 10 == 0 and rest < 10):
        return cardinal(n)
    if rest == 0:
        return f"{cardinal(century)} hundred"
    if rest < 10:
        return f"{cardinal(century)} oh {_ONES[rest]}"
    return f"{cardinal(century)} {cardinal(rest)}"


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _number(token: str) -> str:
    """Words for a written number such as "1,234", "3.14", ".5" or "007"."""
    whole, _, fraction = token.replace(",", "").partition(".")
    if len(whole) > 1 and whole.startswith("0"):
        spoken = _digits(whole)
    else:
        spoken = cardinal(int(whole)) if whole else ""
    if fraction:
        spoken = f"{spoken} point {_digits(fraction)}".lstrip()
    return spoken


# --- Unicode clean-up -------------------------------------------------------------------

_PUNCTUATION = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4\u2039\u203a", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2013\u2014\u2015\u2012", " - "),
    **dict.fromkeys("\u2010\u2011\u2212", "-"),
    **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                    "\u200a\u202f\u205f\u3000", " "),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad\u00a9\u00ae\u2122", ""),
    "\u2026": "...",
    "\u00d7": " times ",
})
_DIGIT_RANGE = re.compile(r"(?<=\d)\s?[\u2013\u2014]\s?(?=[$\u00a3\u20ac]?\d)")
_VULGAR_FRACTION = re.compile(r"(\d?)([\u00bc-\u00be\u2150-\u215e])")


def _clean_unicode(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    # Non-ASCII decimal digits (Arabic-Indic, full-width, ...) would slip past the
    # ASCII-only number patterns below.
    text = "".join(str(unicodedata.decimal(ch)) if not ch.isascii() and ch.isdecimal() else ch
                   for ch in text)
    text = _DIGIT_RANGE.sub(" to ", text)
    text = _VULGAR_FRACTION.sub(
        lambda m: f"{m[1]} {anyascii(m[2])}" if m[1] else anyascii(m[2]), text)
    text = text.translate(_PUNCTUATION)
    # Letters, marks, punctuation and spaces are transliterated; symbols such as
    # currency, degree and superscripts are kept for the patterns that read them.
    return "".join(anyascii(ch) if not ch.isascii() and unicodedata.category(ch)[0] in "LMPZ"
                   else ch for ch in text)


def _ends_sentence(text: str, end: int) -> bool:
    """Whether the period ending at `end` also closes a sentence and must be kept: it
    does at the end of the text or before a capitalised word that is not itself a
    company-style suffix ("Acme Co. Ltd.")."""
    rest = text[end:]
    if not rest.strip():
        return True
    following = re.match(r"\s+([A-Z][A-Za-z]*)", rest)
    return following is not None and following[1] not in _SUFFIXES


def _substitute(pattern: re.Pattern[str], render: Callable[[re.Match[str]], str | None],
                text: str) -> str:
    """`pattern.sub` that spaces the words off neighbouring letters or digits ("mp3" ->
    "mp three"); `render` returning None leaves the match as written."""
    def replace(match: re.Match[str]) -> str:
        words = render(match)
        if words is None:
            return match[0]
        if match.start() > 0 and text[match.start() - 1].isalnum():
            words = " " + words
        if match.end() < len(text) and text[match.end()].isalnum():
            words += " "
        return words
    return pattern.sub(replace, text)


# --- Abbreviations ------------------------------------------------------------------------

_TITLES = {"Mr": "mister", "Mrs": "missus", "Ms": "miz", "Dr": "doctor",
           "Prof": "professor", "Capt": "captain", "Gen": "general", "Lt": "lieutenant",
           "Sgt": "sergeant", "Col": "colonel", "Rev": "reverend", "Hon": "honorable",
           "Gov": "governor", "Sen": "senator", "Mt": "mount"}
# British style drops the period; only these are safe to read bare before a name.
_BARE_TITLES = ("Mrs", "Mr", "Ms", "Dr")
# Abbreviations that can end a sentence, so their period may be the full stop too.
_SUFFIXES = {"Jr": "junior", "Sr": "senior", "Co": "company", "Corp": "corporation",
             "Inc": "incorporated", "Ltd": "limited", "Ave": "avenue", "Rd": "road",
             "Blvd": "boulevard", "Dept": "department", "Bros": "brothers", "etc": "et cetera"}
_INLINE = {"e.g.": "for example", "i.e.": "that is", "a.k.a.": "also known as",
           "vs.": "versus", "vs": "versus", "approx.": "approximately"}


def _alternation(words: list[str] | tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_TITLE_RE = re.compile(
    rf"\b(?:({_alternation(list(_TITLES))})\.|({_alternation(_BARE_TITLES)})(?=\s+[A-Z]))")
_SAINT_STREET_RE = re.compile(r"\bSt\.(?=(\s+[A-Z])?)")
_SUFFIX_RE = re.compile(rf"\b({_alternation(list(_SUFFIXES))})\.")
_INLINE_RE = re.compile(rf"(?<![\w.])({_alternation(list(_INLINE))})(?![\w.])", re.IGNORECASE)
_NUMBER_SIGN_RE = re.compile(r"\b(?:No|no|NO)\.\s?(?=\d)|#(?=\d)")


def _saint_or_street(m: re.Match[str]) -> str:
    # A capitalised word after "St." is the saint's name ("St. Louis"); otherwise the
    # abbreviation follows a street name and its period may end the sentence.
    if m[1]:
        return "saint"
    return "street." if _ends_sentence(m.string, m.end()) else "street"


def _expand_abbreviations(text: str) -> str:
    text = _TITLE_RE.sub(lambda m: _TITLES[m[1] or m[2]], text)
    text = _SAINT_STREET_RE.sub(_saint_or_street, text)
    text = _SUFFIX_RE.sub(
        lambda m: _SUFFIXES[m[1]] + ("." if _ends_sentence(m.string, m.end()) else ""), text)
    text = _INLINE_RE.sub(lambda m: _INLINE[m[1].lower()], text)
    return _NUMBER_SIGN_RE.sub("number ", text)


# --- Numbers --------------------------------------------------------------------------------

# A number starts and ends at a digit boundary. Besides reading every run of digits whole, this
# keeps the passes that need a suffix after the number ("%", a unit) linear: without it they
# retry from every digit of a long run, and "9" * 4096 took 1.6 s to normalize.
_NUM = r"(?<!\d)(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d)"
_MINUS = r"(?:(?<![A-Za-z0-9.])(-))?"
# A number before a suffix, tried only from the start of a run of comma groups ("999,999,..."),
# for the same reason; the bare-number pass still reads whatever these leave.
_SUFFIXED_NUM = rf"{_MINUS}(?<!\d,)({_NUM})"

_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "\u00a3": ("pound", "pounds", "penny", "pence"),
    "\u20ac": ("euro", "euros", "cent", "cents"),
}
_SCALE_SUFFIX = {"k": "thousand", "m": "million", "b": "billion", "bn": "billion"}
_CURRENCY_SYMBOL = "[$\u00a3\u20ac]"
_SCALE = r"(?:\s?((?i:thousand|million|billion|trillion))|(k|K|m|M|bn|b|B))(?![A-Za-z])"
_MONEY_BEFORE_RE = re.compile(rf"{_MINUS}({_CURRENCY_SYMBOL})\s?({_NUM})(?:{_SCALE})?")
_MONEY_AFTER_RE = re.compile(rf"{_SUFFIXED_NUM}\s?({_CURRENCY_SYMBOL})")


def _money(minus: str | None, symbol: str, amount: str, scale: str | None = None) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    sign = "minus " if minus else ""
    whole, _, fraction = amount.replace(",", "").partition(".")
    if scale or len(fraction) > 2:
        return f"{sign}{_number(amount)} {scale + ' ' if scale else ''}{many}"
    units = int(whole or "0")
    cents = int(fraction.ljust(2, "0")) if fraction else 0
    parts = []
    if units or not cents:
        parts.append(f"{cardinal(units)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return sign + ", ".join(parts)


def _money_before(m: re.Match[str]) -> str:
    scale = m[4].lower() if m[4] else _SCALE_SUFFIX[m[5].lower()] if m[5] else None
    return _money(m[1], m[2], m[3], scale)


_AM_PM = r"([AaPp])\.?[Mm](\.?)(?![A-Za-z])"
_CLOCK_12_RE = re.compile(rf"(?<![\d:.])(1[0-2]|0?[1-9])(?::([0-5]\d))?\s?{_AM_PM}")
_CLOCK_24_RE = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")


def _minutes(mm: str) -> str:
    return f"oh {_ONES[int(mm)]}" if mm.startswith("0") else cardinal(int(mm))


def _clock_12(m: re.Match[str]) -> str:
    minutes = f" {_minutes(m[2])}" if m[2] and m[2] != "00" else ""
    period = "." if m[4] and _ends_sentence(m.string, m.end()) else ""
    return f"{cardinal(int(m[1]))}{minutes} {m[3].lower()} m{period}"


def _clock_24(m: re.Match[str]) -> str:
    hour = int(m[1])
    if m[2] != "00":
        return f"{cardinal(hour)} {_minutes(m[2])}"
    return f"{cardinal(hour)} o'clock" if 1 <= hour <= 12 else f"{cardinal(hour)} hundred"


_PERCENT_RE = re.compile(rf"{_SUFFIXED_NUM}\s?%")

# (written form, singular, plural); case matters ("MB" is not "mb").
_UNITS = [
    ("km", "kilometer", "kilometers"), ("m", "meter", "meters"),
    ("cm", "centimeter", "centimeters"), ("mm", "millimeter", "millimeters"),
    ("km\u00b2", "square kilometer", "square kilometers"),
    ("m\u00b2", "square meter", "square meters"), ("m\u00b3", "cubic meter", "cubic meters"),
    ("mi", "mile", "miles"), ("ft", "foot", "feet"),
    ("kg", "kilogram", "kilograms"), ("g", "gram", "grams"), ("mg", "milligram", "milligrams"),
    ("lb", "pound", "pounds"), ("lbs", "pound", "pounds"), ("oz", "ounce", "ounces"),
    ("l", "liter", "liters"), ("L", "liter", "liters"),
    ("ml", "milliliter", "milliliters"), ("mL", "milliliter", "milliliters"),
    ("mph", "mile per hour", "miles per hour"),
    ("km/h", "kilometer per hour", "kilometers per hour"),
    ("kph", "kilometer per hour", "kilometers per hour"),
    ("m/s", "meter per second", "meters per second"),
    ("ms", "millisecond", "milliseconds"), ("min", "minute", "minutes"),
    ("Hz", "hertz", "hertz"), ("kHz", "kilohertz", "kilohertz"),
    ("MHz", "megahertz", "megahertz"), ("GHz", "gigahertz", "gigahertz"),
    ("KB", "kilobyte", "kilobytes"), ("MB", "megabyte", "megabytes"),
    ("GB", "gigabyte", "gigabytes"), ("TB", "terabyte", "terabytes"),
    ("\u00b0C", "degree celsius", "degrees celsius"),
    ("\u00b0F", "degree fahrenheit", "degrees fahrenheit"),
    ("\u00b0", "degree", "degrees"),
]
_UNIT_NAMES = {written: (one, many) for written, one, many in _UNITS}
_UNIT_RE = re.compile(
    rf"{_SUFFIXED_NUM}\s?({_alternation([w for w, _, _ in _UNITS])})(?![A-Za-z0-9\u00b2\u00b3])")


def _unit(m: re.Match[str]) -> str:
    one, many = _UNIT_NAMES[m[3]]
    sign = "minus " if m[1] else ""
    return f"{sign}{_number(m[2])} {one if m[2] == '1' else many}"


_FRACTION_RE = re.compile(r"(?<![\d/.,])(?:(\d+) )?(\d+)/([2-9]|10)(?![\d/])")
_FRACTION_NAMES = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _fraction(m: re.Match[str]) -> str | None:
    numerator, denominator = int(m[2]), int(m[3])
    if not 0 < numerator < denominator:
        return None
    one, many = _FRACTION_NAMES.get(denominator, (ordinal(denominator), ordinal(denominator) + "s"))
    spoken = f"{cardinal(numerator)} {one if numerator == 1 else many}"
    return f"{cardinal(int(m[1]))} and {spoken}" if m[1] else spoken


_ORDINAL_RE = re.compile(r"(?<![\d,.])(\d{1,3}(?:,\d{3})+|\d+)(?i:st|nd|rd|th)(?![A-Za-z])")
_DECADE_RE = re.compile(r"(?<![\d,.])(1\d\d0|20\d0)s(?![A-Za-z])")
_SHORT_DECADE_RE = re.compile(r"(?<![\w.,'])'?([1-9]0)s(?![A-Za-z])")
_NUMBER_RE = re.compile(rf"{_MINUS}({_NUM})")


def _bare_number(m: re.Match[str]) -> str:
    token = m[2]
    if not m[1] and re.fullmatch(r"1\d{3}|20\d\d", token):
        return year(int(token))
    return ("minus " if m[1] else "") + _number(token)


def _expand_numbers(text: str) -> str:
    # Order matters: each pass claims the digits its context explains before the
    # bare-number pass reads whatever is left.
    passes: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]] = [
        (_MONEY_BEFORE_RE, _money_before),
        (_MONEY_AFTER_RE, lambda m: _money(m[1], m[3], m[2])),
        (_CLOCK_12_RE, _clock_12),
        (_CLOCK_24_RE, _clock_24),
        (_PERCENT_RE, lambda m: ("minus " if m[1] else "") + _number(m[2]) + " percent"),
        (_UNIT_RE, _unit),
        (_FRACTION_RE, _fraction),
        (_ORDINAL_RE, lambda m: ordinal(int(m[1].replace(",", "")))),
        (_DECADE_RE, lambda m: _plural(year(int(m[1])))),
        (_SHORT_DECADE_RE, lambda m: _plural(cardinal(int(m[1])))),
        (_NUMBER_RE, _bare_number),
    ]
    for pattern, render in passes:
        text = _substitute(pattern, render, text)
    return text


# --- Remaining symbols and layout ---------------------------------------------------------

_SYMBOL_WORDS = str.maketrans({
    "&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "%": " percent ",
    "/": " slash ", "#": " hash ", "\u00b0": " degrees ", "\u00b2": " squared ",
    "\u00b3": " cubed ", "$": " dollars ", "\u00a3": " pounds ", "\u20ac": " euros ",
    "[": "(", "]": ")", "{": "(", "}": ")",
    # Markdown-style emphasis and code marks are formatting, not speech.
    "*": "", "_": "", "`": "", "|": "", "~": "",
})


def normalize_text(text: str) -> str:
    """Rewrite English `text` as lower-case spoken words, ASCII only.

    Rules worth knowing:
    - Output is lower case; the punctuation kept is ``! ' " ( ) , - . : ; ?``.
    - Cardinals are American style without "and" ("123" -> "one hundred twenty three");
      "1,234" groups are read as one number; numbers from a quadrillion up and numbers
      with leading zeros ("007") are read digit by digit.
    - A bare four-digit number from 1000 to 2099, written without a comma, sign or
      decimals and not followed by a unit, currency or "%", is a year ("1984" ->
      "nineteen eighty four", "2005" -> "two thousand five"); write "1,984" to get the
      cardinal. Decades: "1980s" -> "nineteen eighties", "'90s" -> "nineties".
    - Money: "$3.50" -> "three dollars, fifty cents"; "$1" -> "one dollar"; "£"/"€"
      read as pounds/pence and euros/cents; "$5m", "$2 billion" keep the scale word.
    - Units need a number before them and are case sensitive ("5 MB", "3 km", "20°C");
      "in" (inch) and "s" are not treated as units because they are ordinary words.
    - Times: "3:30 pm" -> "three thirty p m", "15:00" -> "fifteen hundred".
    - "St." before a capitalised word is "saint", otherwise "street".
    - Accented and other non-ASCII letters are transliterated ("café" -> "cafe");
      symbols without a reading (emoji, "<", "^") are left for `text_to_ids` to reject.
    """
    text = _clean_unicode(text)
    text = _expand_abbreviations(text)
    text = _expand_numbers(text)
    text = text.translate(_SYMBOL_WORDS).lower()
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" ([,.;:!?)])", r"\1", text)
    return text.replace("( ", "(").strip()
