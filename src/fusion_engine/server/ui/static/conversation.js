// The conversation editor: one prompt, or several messages (user / assistant) when the user adds
// some. With one message the role is user and the box is labelled "Prompt"; with more, each
// message gets "Message N from [role]" and a remove button, renumbered as messages come and go.
import { fill, h } from "./dom.js";

/** A form problem: the message to show and the field to focus. */
export class Problem extends Error {
  constructor(message, element) {
    super(message);
    this.element = element;
  }
}

export class Conversation {
  /**
   * @param {HTMLOListElement} list where the messages go
   * @param {HTMLButtonElement} addButton the "Add a message" button (focused when the last
   *   message before a removed one is gone)
   */
  constructor(list, addButton) {
    this.list = list;
    this.addButton = addButton;
    addButton.addEventListener("click", () => this.add(null, "", { focus: true }));
  }

  /** Append a message; without a role it alternates from the last one. */
  add(role = null, content = "", { focus = false } = {}) {
    const items = this.list.children;
    const last = items[items.length - 1]?.querySelector("select").value;
    const select = h("select", { class: "turn-role" }, h("option", { value: "user" }, "user"), h("option", { value: "assistant" }, "assistant"));
    select.value = role ?? (last === "user" ? "assistant" : "user");
    const textarea = h("textarea", { class: "turn-text", rows: 4, placeholder: "Ask something…" });
    textarea.value = content;
    const remove = h("button", { type: "button", class: "link-button remove-turn" }, "Remove");
    const item = h(
      "li",
      { class: "turn" },
      h("div", { class: "turn-head" }, h("label", { class: "turn-role-label" }), select, remove),
      h("label", { class: "turn-text-label" }),
      textarea,
    );
    remove.addEventListener("click", () => this.remove(item));
    this.list.append(item);
    this.relabel();
    if (focus) textarea.focus();
    return item;
  }

  remove(item) {
    const before = item.previousElementSibling;
    item.remove();
    this.relabel();
    (before?.querySelector("textarea") ?? this.addButton).focus();
  }

  relabel() {
    const items = [...this.list.children];
    const single = items.length === 1;
    items.forEach((item, k) => {
      const n = k + 1;
      const select = item.querySelector("select");
      const textarea = item.querySelector("textarea");
      const [roleLabel, textLabel] = item.querySelectorAll("label");
      select.id = `turn-${n}-role`;
      textarea.id = `turn-${n}-text`;
      roleLabel.htmlFor = select.id;
      fill(roleLabel, `Message ${n} from`);
      textLabel.htmlFor = textarea.id;
      fill(textLabel, single ? "Prompt" : `Message ${n} text`);
      textLabel.classList.toggle("visually-hidden", !single);
      item.querySelector(".turn-head").hidden = single;
      if (single) select.value = "user";
      item.querySelector(".remove-turn").setAttribute("aria-label", `Remove message ${n}`);
    });
  }

  /** Replace every message (an empty list leaves one empty prompt). */
  set(turns) {
    this.list.replaceChildren();
    for (const turn of turns.length ? turns : [{ role: "user", content: "" }]) this.add(turn.role, turn.content);
  }

  /** The messages as `{role, content}`; throws a Problem for an empty one or a bad last role. */
  read() {
    const items = [...this.list.children];
    const turns = items.map((item, k) => {
      const textarea = item.querySelector("textarea");
      const content = textarea.value.trim();
      if (!content) throw new Problem(items.length === 1 ? "Write a prompt first." : `Message ${k + 1} is empty.`, textarea);
      return { role: item.querySelector("select").value, content };
    });
    if (turns[turns.length - 1].role !== "user") {
      throw new Problem("The conversation must end with a user message.", items[items.length - 1].querySelector("select"));
    }
    return turns;
  }
}
