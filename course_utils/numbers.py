"""How the toolkit writes numbers for learners: pt-BR, the same way in every figure and table.

    from course_utils.numbers import format_number, number_formatter, BrTable
    format_number(5891.1)            # '5.891,1'
    format_number(1024)              # '1.024'
    format_number(0.1234, 2)         # '0,12'
    ax.xaxis.set_major_formatter(number_formatter())   # axis ticks '2.000', '0,5'
    BrTable(df)                      # the same data, displayed with pt-BR numbers

One format everywhere: '.' groups thousands, ',' separates decimals, a missing value (NaN, None,
pd.NA) is '—', booleans are 'sim' / 'não'. Only the *display* changes: the data stay numbers (and
bools), so code can still compute with them (`df["msg/s"] > 0`).
"""
from __future__ import annotations

import math
import numbers as _abc
from typing import Iterable

import pandas as pd
from matplotlib.ticker import FuncFormatter

MISSING = "—"
MAX_DECIMALS = 3


def is_missing(value) -> bool:
    """True for None, NaN and pd.NA/NaT (what a table shows as '—')."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays: not a single missing value
        return False


def decimals_needed(values: Iterable, max_decimals: int = MAX_DECIMALS) -> int:
    """The fewest decimals (up to `max_decimals`) that show every value as it is."""
    needed = 0
    for value in values:
        if is_missing(value) or isinstance(value, bool) or not isinstance(value, _abc.Real):
            continue
        for decimals in range(needed, max_decimals + 1):
            if abs(round(float(value), decimals) - float(value)) < 1e-9 * max(1.0, abs(float(value))):
                break
        needed = max(needed, decimals)
        if needed == max_decimals:
            break
    return needed


def format_number(value, decimals: int | None = None) -> str:
    """A number written the pt-BR way: 5891.1 -> '5.891,1', 1024 -> '1.024', NaN -> '—'.

    decimals: fixed number of decimals; None shows as many as the value needs, up to three
    (5891.1 -> '5.891,1', 2.0 -> '2', 0.12345 -> '0,123'). Booleans become 'sim' / 'não';
    anything that is not a number is returned as str().
    """
    if is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "sim" if value else "não"
    if not isinstance(value, _abc.Real):
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if decimals is None:
        decimals = decimals_needed([value])
    text = f"{value:,.{decimals}f}"           # '5,891.1' (English separators)
    text = text.replace(",", "\0").replace(".", ",").replace("\0", ".")
    return text[1:] if text.startswith("-") and round(value, decimals) == 0 else text  # no '-0'


def number_formatter(decimals: int | None = None) -> FuncFormatter:
    """A matplotlib tick formatter writing axis numbers as `format_number` does."""
    return FuncFormatter(lambda value, _pos=None: format_number(value, decimals))


def format_column(values: pd.Series, decimals: int | None = None) -> list[str]:
    """A table column as text: every number with the same decimals (those the column needs)."""
    if decimals is None:
        decimals = decimals_needed(values)
    return [format_number(v, decimals) if isinstance(v, _abc.Real) and not isinstance(v, bool)
            else format_number(v) for v in values]


def formatted(df: pd.DataFrame, decimals: dict[str, int] | None = None) -> pd.DataFrame:
    """A plain DataFrame of strings: `df` as a learner should read it (pt-BR numbers)."""
    decimals = decimals or {}
    text = pd.DataFrame({i: format_column(df.iloc[:, i], decimals.get(c))
                         for i, c in enumerate(df.columns)}, index=df.index)
    text.columns = df.columns
    return text


class BrTable(pd.DataFrame):
    """A DataFrame that *displays* its numbers the pt-BR way (notebook HTML and print()).

    The data are untouched; slicing, filtering and selecting columns keep the class (and so the
    display). Subclasses change what is shown through `display_frame()` and `caption()`.
    """

    @property
    def _constructor(self):
        return type(self)

    def display_frame(self) -> pd.DataFrame:
        """The plain DataFrame of strings that is shown."""
        return formatted(pd.DataFrame(self))

    def caption(self) -> str:
        """A line shown above the table (empty: none)."""
        return ""

    def _repr_html_(self) -> str | None:
        html = pd.DataFrame._repr_html_(self.display_frame())
        caption = self.caption()
        if html is not None and caption:
            from html import escape

            html = f"<p>{escape(caption)}</p>\n{html}"
        return html

    def __repr__(self) -> str:
        text = repr(self.display_frame())
        caption = self.caption()
        return f"{caption}\n{text}" if caption else text

    def to_pandas(self) -> pd.DataFrame:
        """The same data as a plain DataFrame (shown with pandas' own number format)."""
        return pd.DataFrame(self)
