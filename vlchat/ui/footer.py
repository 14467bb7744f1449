"""The footer of keys, recomposed only when the keys it shows change, and fitted to its width:
keys that do not fit are left out whole, the least useful first (F1 lists them all)."""

from __future__ import annotations

from textual.widgets import Footer
from textual.widgets._footer import FooterKey


def _shown(screen) -> tuple[tuple[tuple[str, str, str], ...], dict[str, bool]]:
    """The keys the footer shows, in order, and whether each action is enabled now."""
    keys, enabled = [], {}
    for _namespace, binding, on, _tooltip in screen.active_bindings.values():
        if binding.show:
            keys.append((binding.key, binding.action, binding.description))
            enabled.setdefault(binding.action, on)
    return tuple(keys), enabled


# Left out first when the footer is too narrow (by action, without its namespace); keys not named
# here go before these. Send, Stop and Help stay longest: Help lists every key.
KEEP_LONGEST = ("send", "stop", "help")
LEAVE_OUT_FIRST = ("copy", "next_picture", "previous_picture", "toggle_preview", "quit")


def _leave_out_rank(action: str) -> int:
    name = action.rpartition(".")[2]
    if name in LEAVE_OUT_FIRST:
        return LEAVE_OUT_FIRST.index(name)
    if name in KEEP_LONGEST:
        return 100 + KEEP_LONGEST.index(name)
    return -1


def _cells(key: FooterKey) -> int:
    margin = key.styles.margin
    return key.render().cell_len + key.styles.gutter.width + margin.left + margin.right


class KeyFooter(Footer):
    """Textual's footer, which builds all its keys again whenever any binding is checked: at the
    start and end of every answer (Esc's Stop turns on and off) that costs tens of milliseconds
    of the UI thread, taken from the model while it writes. Here a change of which keys are on
    restyles those keys in place; only a change of the keys themselves composes the footer again."""

    _composed: tuple = ()
    _pending = False  # a composition is already on its way: it reads the bindings as they are then

    def compose(self):
        if self._bindings_ready:
            self._pending = False
            self._composed = _shown(self.screen)[0]
        yield from super().compose()
        self.call_after_refresh(self.fit)

    def on_resize(self, _event) -> None:
        self.fit()

    def fit(self) -> None:
        """Show the keys that fit beside the palette's, whole; leave out the rest, least useful first."""
        if not self.is_attached:
            return
        keys = [k for k in self.query(FooterKey) if not k.has_class("-command-palette")]
        room = self.size.width - sum(_cells(k) for k in self.query(FooterKey) if k.has_class("-command-palette"))
        widths = {id(k): _cells(k) for k in keys}
        total = sum(widths.values())
        out = set()
        for key in sorted(keys, key=lambda k: _leave_out_rank(k.action)):
            if total <= room:
                break
            out.add(id(key))
            total -= widths[id(key)]
        for key in keys:
            key.display = id(key) not in out

    def bindings_changed(self, screen) -> None:
        if self._bindings_ready and screen.app.app_focus and self.is_attached and screen is self.screen:
            if self._pending:
                return  # (at the start, bindings change twice before the first composition)
            keys, enabled = _shown(screen)
            if keys == self._composed and keys:
                for key in self.query(FooterKey):
                    off = not enabled.get(key.action, True)
                    if key._disabled != off:
                        key._disabled = off  # what a click checks
                        key.set_class(off, "-disabled")
                return
        super().bindings_changed(screen)
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self._pending = True  # Footer asked for a composition after the next refresh
