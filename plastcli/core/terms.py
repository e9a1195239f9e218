"""The plasticity terms as data: one grammar, every term declared once (SPEC §3.1).

A term is ``F = sign · s · a bᵀ`` for one layer's matrix M (W_l, or B_l for a feedback
rule), built from the layer's local quantities, with

- left factor  ``a`` ∈ {``e_post``, ``y_post``, ``ones``}           (e_l, y_l, 1 of size n_l)
- right factor ``b`` ∈ {``y_pre``, ``e_pre``, ``ones``, ``y_pre − Mᵀ y_post``} (size n_{l-1})
- scalar       ``s`` ∈ {``1``, ``1ᵀ y_post``, ``y_postᵀ M e_pre``, ``e_postᵀ M y_pre``}
- ``sign`` ∈ {−1, +1}

plus the one term outside it, ``decay`` = ``−M``. The ten terms of the pool (P1 Appendix B)
are :data:`BUILTIN`; a recipe declares more under ``rule.define`` (:func:`declare`), and
``rule.terms: grammar`` selects every term of the grammar (:func:`grammar`).

The consumers derive from these declarations and write no term out by hand:
:func:`plastcli.core.rules.apply_rule` (the forward update, also the autograd reference), the
reverse pass of :mod:`plastcli.engine.adjoint`, and the chunked input layer of
:mod:`plastcli.engine.input_layer`. They all work on a :class:`LayerPlan`: the active terms grouped
by left factor, then by right factor and sign, so that every left factor is one outer
product per step. This module does not import torch (recipe validation uses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# canonical (ASCII) spellings; the documented forms with ᵀ and − are accepted too
E_POST, Y_POST, ONES = "e_post", "y_post", "ones"
Y_PRE, E_PRE, OJA_PRE = "y_pre", "e_pre", "y_pre - M^T y_post"
S_ONE, S_SUM, S_YME, S_EMY = "1", "1^T y_post", "y_post^T M e_pre", "e_post^T M y_pre"
A_FACTORS = (E_POST, Y_POST, ONES)
B_FACTORS = (Y_PRE, E_PRE, ONES, OJA_PRE)
S_FACTORS = (S_ONE, S_SUM, S_YME, S_EMY)
SIGNS = (-1, 1)
DECAY_NAME = "decay"
GRAMMAR = "grammar"  # rule.terms: grammar selects every term of the grammar

# short tokens for the names of grammar terms that are not built in (g_<a>_<b>[_<s>])
_TOKENS = {E_POST: "epost", Y_POST: "ypost", ONES: "ones", Y_PRE: "ypre", E_PRE: "epre",
           OJA_PRE: "oja", S_SUM: "sumy", S_YME: "yMe", S_EMY: "eMy"}


def pretty(value: str) -> str:
    """The documented spelling of a factor: ``y_pre − Mᵀ y_post``, ``1ᵀ y_post``, ..."""
    return value.replace("^T", "ᵀ").replace(" - ", " − ")


def _key(text: str) -> str:
    return re.sub(r"\s+", "", text.replace("ᵀ", "^T").replace("−", "-"))


_SPELLINGS = {field: {_key(v): v for v in values}
              for field, values in (("a", A_FACTORS), ("b", B_FACTORS), ("s", S_FACTORS))}


def allowed(field: str) -> str:
    """The allowed values of a declaration field, for error messages and docs."""
    if field == "sign":
        return "-1, +1"
    values = {"a": A_FACTORS, "b": B_FACTORS, "s": S_FACTORS}[field]
    return ", ".join(f"'{pretty(v)}'" + (f" (ASCII '{v}')" if pretty(v) != v else "")
                     for v in values)


class TermError(ValueError):
    """An invalid declaration; ``field`` names the offending key (a, b, s, sign or '')."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Term:
    """One declared term: ``sign · s · a bᵀ``, or the decay term ``−M`` (``decay=True``)."""

    name: str
    a: str | None = None
    b: str | None = None
    s: str = S_ONE
    sign: int = 1
    decay: bool = False

    @property
    def structure(self) -> tuple:
        """What the term computes, whatever its name and sign."""
        return ("decay",) if self.decay else (self.a, self.b, self.s)

    @property
    def reads_pre_error(self) -> bool:
        """Does the term read e_{l-1} (so layer 1 needs the synthetic e_0)?"""
        return not self.decay and (self.b == E_PRE or self.s == S_YME)

    def formula(self) -> str:
        """The term as SPEC §3.1 prints it, e.g. ``−(1ᵀ y_post) e_post y_preᵀ``."""
        if self.decay:
            return "−M"
        sign = "−" if self.sign < 0 else "+"
        scalar = "" if self.s == S_ONE else f"({pretty(self.s)}) "
        b = f"({pretty(self.b)})" if self.b == OJA_PRE else self.b
        return f"{sign}{scalar}{self.a} {b}ᵀ"

    def to_dict(self) -> dict:
        """JSON-ready declaration (stores record one per rule term)."""
        if self.decay:
            return {"name": self.name, "decay": True, "formula": self.formula()}
        return {"name": self.name, "a": self.a, "b": self.b, "s": self.s, "sign": self.sign,
                "formula": self.formula()}


def _builtin(name, a, b, s=S_ONE, sign=-1) -> Term:
    return Term(name, a, b, s, sign)


# The pool of P1 Appendix B in SPEC §3.1's order (its indices are the engine's term indices).
BUILTIN: tuple[Term, ...] = (
    _builtin("pseudo_grad", E_POST, Y_PRE),  # -e_l y_{l-1}^T
    _builtin("post_act_pre_err", Y_POST, E_PRE),  # -y_l e_{l-1}^T
    _builtin("err_hebb", E_POST, E_PRE),  # -e_l e_{l-1}^T
    Term(DECAY_NAME, sign=-1, decay=True),  # -W_l
    _builtin("ones_pre_err", ONES, E_PRE),  # -1 e_{l-1}^T
    _builtin("sum_post_grad", E_POST, Y_PRE, S_SUM),  # -(1^T y_l) e_l y_{l-1}^T
    _builtin("quad_1", Y_POST, E_PRE, S_YME),  # -(y_l^T W_l e_{l-1}) y_l e_{l-1}^T
    _builtin("quad_2", E_POST, Y_PRE, S_YME),  # -(y_l^T W_l e_{l-1}) e_l y_{l-1}^T
    _builtin("quad_3", Y_POST, E_PRE, S_EMY),  # -(y_{l-1}^T W_l^T e_l) y_l e_{l-1}^T
    _builtin("oja", Y_POST, OJA_PRE, sign=1),  # +(y_l y_{l-1}^T - (y_l y_l^T) W_l)
)
TERM_NAMES: tuple[str, ...] = tuple(t.name for t in BUILTIN)
_BY_STRUCTURE = {t.structure: t for t in BUILTIN}


@lru_cache(maxsize=1)
def grammar() -> tuple[Term, ...]:
    """Every distinct term of the grammar (3 a × 4 b × 4 s, plus decay), built-in ones
    under their names and first (in pool order), the others named ``g_<a>_<b>[_<s>]``
    with sign −1. Sign is not part of what a term spans (the coefficient carries it)."""
    extra = []
    for a in A_FACTORS:
        for b in B_FACTORS:
            for s in S_FACTORS:
                if (a, b, s) in _BY_STRUCTURE:
                    continue
                name = f"g_{_TOKENS[a]}_{_TOKENS[b]}" + ("" if s == S_ONE else f"_{_TOKENS[s]}")
                extra.append(Term(name, a, b, s, -1))
    return BUILTIN + tuple(extra)


def grammar_names() -> list[str]:
    return [t.name for t in grammar()]


_GRAMMAR_BY_NAME = None


def _grammar_by_name() -> dict[str, Term]:
    global _GRAMMAR_BY_NAME
    if _GRAMMAR_BY_NAME is None:
        _GRAMMAR_BY_NAME = {t.name: t for t in grammar()}
    return _GRAMMAR_BY_NAME


def _parse(field: str, value) -> str:
    if value is None:
        raise TermError(field, f"required; allowed: {allowed(field)}")
    found = _SPELLINGS[field].get(_key(str(value)))
    if found is None:
        raise TermError(field, f"'{value}' is not allowed; allowed: {allowed(field)}")
    return found


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")


def declare(name: str, a, b, s=S_ONE, sign=1) -> Term:
    """A recipe-declared term (``rule.define.<name>: {a, b, s, sign}``); raises
    :class:`TermError` naming the field and its allowed values."""
    if not _NAME.match(name):
        raise TermError("", f"'{name}' is not a valid term name (letters, digits and _, "
                        "starting with a letter)")
    if name in _grammar_by_name() or name == GRAMMAR:
        raise TermError("", f"'{name}' is already a term of the grammar; choose another name")
    term = Term(name, _parse("a", a), _parse("b", b), _parse("s", S_ONE if s is None else s))
    if sign is None or float(sign) not in (-1.0, 1.0):
        raise TermError("sign", f"'{sign}' is not allowed; allowed: {allowed('sign')}")
    return Term(term.name, term.a, term.b, term.s, int(sign))


def resolve(name: str, defined: dict[str, Term] | None = None) -> Term | None:
    """The declaration of ``name``: recipe-defined, built in, or a grammar term."""
    if defined and name in defined:
        return defined[name]
    return _grammar_by_name().get(name)


@dataclass(frozen=True)
class Pool:
    """The terms of one run, in engine index order: the ten built-ins first (so their
    indices never change), then every other term a rule names. Coefficient tensors are
    ``[..., len(pool)]``."""

    terms: tuple[Term, ...] = BUILTIN

    def __len__(self) -> int:
        return len(self.terms)

    def __getitem__(self, i: int) -> Term:
        return self.terms[i]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def index(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.terms)}

    def decl(self, name: str) -> Term:
        return self.terms[self.index[name]]


BUILTIN_POOL = Pool()


def make_pool(names: list[str], defined: dict[str, Term] | None = None) -> Pool:
    """The pool holding every term of ``names`` (built-ins + the others in order). Raises
    :class:`TermError` for an unknown name or two terms computing the same thing."""
    extra: list[Term] = []
    for n in names:
        if n in TERM_NAMES or any(t.name == n for t in extra):
            continue
        t = resolve(n, defined)
        if t is None:
            raise TermError(n, f"unknown term '{n}'")
        extra.append(t)
    seen: dict[tuple, str] = {}
    for t in BUILTIN + tuple(extra):
        if t.structure in seen:
            raise TermError(t.name, f"'{t.name}' computes the same term as '{seen[t.structure]}' "
                            f"({t.formula()})")
        seen[t.structure] = t.name
    return BUILTIN_POOL if not extra else Pool(BUILTIN + tuple(extra))


def declared(define: dict | None) -> dict[str, Term]:
    """``rule.define`` (name -> object with a, b, s, sign, or a mapping) as Terms."""
    out = {}
    for name, spec in (define or {}).items():
        get = spec.get if isinstance(spec, dict) else lambda k, d=None, sp=spec: getattr(sp, k, d)
        out[name] = declare(name, get("a"), get("b"), get("s", S_ONE), get("sign", 1))
    return out


def recipe_pool(recipe) -> Pool:
    """The pool of a meta-train recipe: its rule's and feedback rule's terms, with the
    terms both declare under ``define``."""
    rules = [r for r in (recipe.rule, getattr(recipe, "feedback_rule", None)) if r is not None]
    defined: dict[str, Term] = {}
    for r in rules:
        defined.update(declared(getattr(r, "define", None)))
    return make_pool([n for r in rules for n in r.terms], defined)


# --------------------------------------------------------------------------- layer plans


@dataclass(frozen=True)
class Group:
    """Active terms sharing left factor a, right factor b and sign: they add
    ``sign · (sum_r c_r s_r) · b`` to the right factor of the outer product with a.
    ``members`` are (pool index, scalar) in pool order."""

    a: str
    b: str
    sign: int
    members: tuple[tuple[int, str], ...]

    @property
    def key(self) -> tuple:
        return (self.a, self.b, self.sign)

    @property
    def constant(self) -> bool:
        """One term with s = 1: the group's coefficient is that term's coefficient."""
        return len(self.members) == 1 and self.members[0][1] == S_ONE


@dataclass(frozen=True)
class LayerPlan:
    """The active terms of one layer, grouped: ``lefts`` is ((a, groups), ...) in the order
    e_post, y_post, ones; groups in the order of B_FACTORS, sign −1 before +1."""

    terms: tuple[tuple[int, Term], ...]  # active (pool index, declaration), pool order
    lefts: tuple[tuple[str, tuple[Group, ...]], ...]
    decay: int | None  # pool index of the decay term if active

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(g for _, gs in self.lefts for g in gs)

    @property
    def scalars(self) -> frozenset[str]:
        """The state-dependent scalars s the layer needs (not 1)."""
        return frozenset(s for g in self.groups for _, s in g.members if s != S_ONE)

    @property
    def rights(self) -> frozenset[str]:
        return frozenset(g.b for g in self.groups)

    @property
    def left_names(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.lefts)

    @property
    def reads_pre_error(self) -> bool:
        return any(t.reads_pre_error for _, t in self.terms)

    @property
    def needs_v(self) -> bool:
        """Is ``v = Mᵀ y_post`` needed (Oja's right factor, or y_postᵀ M e_pre's reverse)?"""
        return OJA_PRE in self.rights or S_YME in self.scalars

    def group(self, a: str, b: str, sign: int | None = None) -> Group | None:
        for g in self.groups:
            if g.a == a and g.b == b and (sign is None or g.sign == sign):
                return g
        return None

    def chunkable(self) -> bool:
        """May layer 1 run in chunks of basis products (:mod:`plastcli.engine.input_layer`)?
        Its terms must all have s = 1, a ∈ {e_post, y_post} and b ∈ {y_pre, e_pre}, except
        Oja's right factor y_pre − Mᵀ y_post with a = y_post, which must be there (it is
        what the chunks save); no decay."""
        if self.decay is not None or not self.terms:
            return False
        for _, t in self.terms:
            if t.s != S_ONE or t.a == ONES:
                return False
            if t.b not in (Y_PRE, E_PRE) and not (t.a == Y_POST and t.b == OJA_PRE):
                return False
        return self.group(Y_POST, OJA_PRE) is not None


@lru_cache(maxsize=4096)
def plan(pool: Pool, active) -> LayerPlan:
    """Group the active terms (pool indices) of one layer; cached."""
    idx = tuple(sorted(set(int(r) for r in active)))
    terms = tuple((r, pool[r]) for r in idx)
    decay = next((r for r, t in terms if t.decay), None)
    lefts = []
    for a in A_FACTORS:
        groups = []
        for b in B_FACTORS:
            for sign in SIGNS:
                members = tuple((r, t.s) for r, t in terms
                                if not t.decay and t.a == a and t.b == b and t.sign == sign)
                if members:
                    groups.append(Group(a, b, sign, members))
        if groups:
            lefts.append((a, tuple(groups)))
    return LayerPlan(terms, tuple(lefts), decay)
