"""P1 Fig 1: BP vs FA vs DFA online (plast baseline)."""


from plastcli.figures import online as _on
from plastcli.figures import register
from plastcli.figures.style import layer_color, subplots

FIG1 = "fig1-fa-dfa-bp"


@register("2022", "fig1-fa-dfa-bp", stores=(FIG1,))
def online_fig1(s):
    st = s[FIG1]
    fig, ax = subplots(3, ncols=3, size=(4.6, 3.6))
    _on.accuracy_panel(ax[0], st, ["BP", "FA", "DFA"], "(a) online MNIST")
    for a, name in zip(ax[1:], ("FA", "DFA"), strict=True):
        ang = st["stats/angles_mean"][_on.cond(st, name)]  # [S, L]
        for l in range(1, ang.shape[1]):
            _on.stat_band(a, st, "angles", name, f"α{l} (e_{l})", index=(l,),
                          c=layer_color(l - 1, ang.shape[1] - 1))
        a.axhline(90, color="grey", lw=0.6, ls="--")
        a.set(xlabel="training samples seen", ylabel="angle to backprop error (degrees)",
              ylim=(0, 120), title=f"({'b' if name == 'FA' else 'c'}) {name}: error alignment "
              "α_l to BP\n(validation batch-mean errors)")
        a.legend(fontsize=8)
    fig.suptitle("P1 Fig 1 — backprop vs feedback alignment vs direct feedback alignment")
    return {"fig1-fa-dfa-bp": fig, "fig1-fa-dfa-bp.md": _on.results_markdown(
        {FIG1: st}, "P1 Fig 1 — final validation accuracy after the last online sample")}
