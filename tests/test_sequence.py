"""course_utils.sequence: the messages read from service logs, and the diagram drawn from them."""
import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from course_utils.sequence import mensagens, plot_sequence  # noqa: E402

LOG = pd.DataFrame([
    (0.00, "pedidos", "recebeu CriarPedido (corr p-1)"),
    (0.01, "relay", "publicou pedido.criado (corr p-1)"),
    (0.02, "relay", "publicou pedido.criado (corr p-2)"),
    (0.03, "estoque", "recebeu pedido.criado (corr p-1)"),
    (0.04, "estoque", "pedido p-1 reservado (corr p-1)"),
    (0.05, "pagamentos", "recebeu estoque.reservado (corr p-1)"),  # its publisher's line comes late
    (0.06, "estoque", "publicou estoque.reservado (corr p-1)"),
], columns=["t", "quem", "linha"])


def test_receipts_are_paired_with_their_publication():
    rows = mensagens(LOG, corr="p-1")
    assert list(zip(rows["de"], rows["para"], rows["rotulo"])) == [
        ("cliente", "pedidos", "CriarPedido"), ("relay", "estoque", "pedido.criado"),
        ("estoque", "pagamentos", "estoque.reservado")]
    assert rows["t_envio"].tolist() == [0.00, 0.01, 0.05]  # never after the receipt
    assert len(mensagens(LOG, corr="p-2")) == 0  # published, never received


def test_the_figure_has_one_lifeline_per_participant_and_one_arrow_per_message():
    fig = plot_sequence(mensagens(LOG, corr="p-1"), title="pedido p-1")
    assert fig.participantes == ["cliente", "pedidos", "relay", "estoque", "pagamentos"]
    assert len(fig.setas) == 3
    textos = {t.get_text() for t in fig.axes[0].texts}
    assert {"cliente", "estoque.reservado", "pedido.criado"} <= textos
    fig2 = plot_sequence([(0.0, "a", "b", "x"), (0.1, "b", "a", "y")])
    assert fig2.participantes == ["a", "b"] and len(fig2.setas) == 2
