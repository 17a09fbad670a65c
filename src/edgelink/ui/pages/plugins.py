"""``/plugins``: the plugins with the seed's badges, their actions, config forms and README.

A card per plugin, installed or listed in the index, with its badge
(installed and active, installed and inactive, update available,
available; or invalid with the manifest's error), version, description and
the last error (a refused enable, a rolled-back update). Buttons call the
gateway as ``/api/admin/plugins`` does (audited, refused during panic):
**Enable**, **Disable**, **Check for update**, **Update**, **Install**.
**Configure** turns the plugin's config_schema into a form (a switch per
boolean, a number field per number, a text field otherwise); errors show
next to the form and nothing is saved. **README** renders the plugin's
README.md in a dialog (`render_readme`: markdown-it-py without raw HTML,
code highlighted by Pygments, links opening outside the gateway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nicegui import ui

from edgelink.errors import ConfigError, EdgelinkError
from edgelink.ui.layout import View, act, page, set_text

if TYPE_CHECKING:
    from nicegui.elements.label import Label

__all__ = ["BADGE_COLOURS", "plugins", "render_readme"]

#: Badge -> (colour, label).
BADGE_COLOURS = {
    "installed_active": ("positive", "installed · active"),
    "installed_inactive": ("grey", "installed · inactive"),
    "update_available": ("warning", "update available"),
    "available": ("info", "available"),
    "invalid": ("negative", "invalid"),
}


def render_readme(text: str) -> str:
    """Return a README's HTML: no raw HTML passes, code is highlighted, links open outside."""
    from markdown_it import MarkdownIt
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    def code(source: str, lang: str, _attrs: str) -> str:
        try:
            lexer = get_lexer_by_name(lang) if lang else TextLexer()
        except ClassNotFound:
            lexer = TextLexer()
        return str(highlight(source, lexer, HtmlFormatter(nowrap=True)))

    md = MarkdownIt("commonmark", {"html": False, "highlight": code})

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return str(self.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return str(md.render(text))


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    readme = (
        ".readme h1{font-size:1.5rem;line-height:2rem;margin:.5rem 0}"
        ".readme h2{font-size:1.25rem;line-height:1.75rem;margin:.5rem 0}"
        ".readme h3{font-size:1.1rem;margin:.4rem 0}.readme p{margin:.4rem 0}"
        ".readme pre{padding:.5rem;border-radius:4px;overflow-x:auto}"
        ".readme a{color:#1976d2;text-decoration:underline}"
    )
    return readme + str(HtmlFormatter().get_style_defs(".readme pre"))  # type: ignore[no-untyped-call]


class PluginCard:
    """One plugin's card."""

    def __init__(self, page_: PluginsPage, info: dict[str, Any]) -> None:
        self.page = page_
        self.name = name = info["name"]
        self.card = ui.card().classes("w-96").props(f'data-testid="plugin-{name}"')
        with self.card:
            with ui.row().classes("w-full items-center no-wrap"):
                ui.label(name).classes("font-bold")
                ui.space()
                self.badge = ui.badge("").props('data-testid="badge"')
            self.version: Label = ui.label("").classes("text-sm")
            self.description: Label = ui.label("").classes("text-sm opacity-70")
            self.error: Label = (
                ui.label("").classes("text-negative text-sm").props('data-testid="plugin-error"')
            )
            self.buttons = ui.row().classes("gap-1")
        self.update(info)

    def update(self, info: dict[str, Any]) -> None:
        """Show a fresh state and the buttons that fit it."""
        self.info = info
        colour, label = BADGE_COLOURS.get(info["badge"], ("grey", info["badge"]))
        if self.badge.text != label:
            self.badge.set_text(label)
        if self.badge.props.get("color") != colour:
            self.badge.props(f"color={colour}")
        update = f" → {info['update_to']}" if info.get("update_to") else ""
        set_text(self.version, f"version {info.get('version') or '-'}{update}")
        set_text(self.description, info.get("description") or "")
        set_text(self.error, info.get("last_error") or "")
        self.buttons.clear()
        with self.buttons:
            badge = info["badge"]
            if badge == "available":
                self._button("Install", "install")
            elif badge != "invalid":
                if info["active"]:
                    self._button("Disable", "disable")
                else:
                    self._button("Enable", "enable")
                self._button("Check for update", "check")
                if info.get("update_to"):
                    self._button("Update", "update")
                ui.button("Configure", on_click=lambda: self.page.open_config(self.info)).props(
                    "dense flat"
                )
            if info.get("manifest") is not None:
                ui.button("README", on_click=lambda: self.page.open_readme(self.name)).props(
                    "dense flat"
                )

    def _button(self, label: str, action: str) -> None:
        ui.button(label, on_click=lambda: self.page.run(self.name, action)).props(
            f'dense data-testid="{action}"'
        )


class PluginsPage:
    """The cards, the README dialog and the config dialog of one page view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.cards: dict[str, PluginCard] = {}
        ui.add_css(_pygments_css())
        self.summary: Label = ui.label("").classes("text-sm opacity-70")
        self.grid = ui.row().classes("w-full gap-4")
        with ui.dialog() as readme, ui.card().classes("w-[48rem] max-w-full"):
            # `render_readme` escapes raw HTML and markdown-it refuses javascript:/data:
            # links, so what reaches the page is markup markdown-it made; DOMPurify
            # would also strip the links' target="_blank".
            self.readme_html = (
                ui.html("", sanitize=False).classes("readme w-full").props('data-testid="readme"')
            )
            ui.button("Close", on_click=readme.close).props("flat")
        self.readme_dialog = readme
        with ui.dialog() as config, ui.card().classes("w-96"):
            self.config_title: Label = ui.label("").classes("font-bold")
            self.config_form = ui.column().classes("w-full")
            self.config_error: Label = (
                ui.label("").classes("text-negative text-sm").props('data-testid="config-error"')
            )
            with ui.row():
                ui.button("Save", on_click=self.save_config).props('data-testid="save-config"')
                ui.button("Cancel", on_click=config.close).props("flat")
        self.config_dialog = config
        self.fields: dict[str, Any] = {}
        self._config_of = ""
        self.refresh()

    def refresh(self) -> None:
        """Rediscover and update the cards."""
        plugins = self.view.gateway.plugins
        plugins.discover()
        listed = plugins.as_list()
        set_text(self.summary, f"{len(listed)} plugins · folder {plugins.folder}")
        seen = set()
        for info in listed:
            seen.add(info["name"])
            card = self.cards.get(info["name"])
            if card is None:
                with self.grid:
                    self.cards[info["name"]] = PluginCard(self, info)
            else:
                card.update(info)
        for name in [n for n in self.cards if n not in seen]:
            self.grid.remove(self.cards.pop(name).card)

    async def run(self, name: str, action: str) -> None:
        """Run a plugin action through the gateway; show its outcome."""
        gateway, who = self.view.gateway, self.view.who
        await act(lambda: gateway.plugin_action(name, action, who=who), f"{name}: {action} done")
        self.refresh()

    def open_readme(self, name: str) -> None:
        """Show the plugin's README rendered."""
        text = self.view.gateway.plugins.readme(name) or "*This plugin has no README.md.*"
        self.readme_html.set_content(render_readme(text))
        self.readme_dialog.value = True

    def open_config(self, info: dict[str, Any]) -> None:
        """Build the config form from the plugin's schema."""
        self._config_of = info["name"]
        set_text(self.config_title, f"Configure {info['name']}")
        set_text(self.config_error, "")
        schema = (info.get("manifest") or {}).get("config_schema") or {}
        props = schema.get("properties") or {}
        current = info.get("config") or {}
        self.config_form.clear()
        self.fields = {}
        with self.config_form:
            for key, spec in props.items():
                kind = spec.get("type") if isinstance(spec, dict) else None
                value = current.get(key, spec.get("default") if isinstance(spec, dict) else None)
                kinds = kind if isinstance(kind, list) else [kind]
                if "boolean" in kinds:
                    self.fields[key] = ui.switch(key, value=bool(value))
                elif "integer" in kinds or "number" in kinds:
                    self.fields[key] = ui.number(key, value=value)
                else:
                    self.fields[key] = ui.input(key, value="" if value is None else str(value))
        self.config_dialog.value = True

    async def save_config(self) -> None:
        """Validate and save the form; on an error keep the dialog open with the reason."""
        config: dict[str, Any] = {}
        for key, field in self.fields.items():
            value = field.value
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            config[key] = value
        gateway, who = self.view.gateway, self.view.who
        try:
            await gateway.configure_plugin(self._config_of, config, who=who)
        except (ConfigError, EdgelinkError, KeyError) as exc:
            set_text(self.config_error, str(exc))
            return
        ui.notify(f"{self._config_of}: configured", type="positive")
        self.config_dialog.value = False
        self.refresh()


@page("/plugins", "Plugins", icon="extension")
def plugins(view: View) -> None:
    """The plugins page."""
    PluginsPage(view)
