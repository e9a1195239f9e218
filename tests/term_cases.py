"""The declaration list the term tests are generated over: every term of the grammar
(the ten built-in ones among them) and terms declared the way a recipe declares them."""

from __future__ import annotations

from plastcli.core import terms

# rule.define of a recipe (ASCII and the documented spellings); 'hebb' fits the chunked
# input layer, the other two carry a state-dependent scalar
RECIPE_DEFINE = {
    "hebb": {"a": "y_post", "b": "y_pre", "sign": 1},
    "hebb_sum": {"a": "y_post", "b": "y_pre", "s": "1^T y_post", "sign": -1},
    "ones_oja": {"a": "ones", "b": "y_pre − Mᵀ y_post", "s": "e_postᵀ M y_pre", "sign": -1},
}
RECIPE_TERMS = terms.declared(RECIPE_DEFINE)
RECIPE_POOL = terms.make_pool(list(RECIPE_TERMS), RECIPE_TERMS)

# (declaration, pool holding it): grammar terms in the pool a rule naming them gets
DECLARED = [(t, terms.make_pool([t.name])) for t in terms.grammar()] + [
    (t, RECIPE_POOL) for t in RECIPE_TERMS.values()]
IDS = [t.name for t, _ in DECLARED]
