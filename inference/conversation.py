"""From OpenAI messages to what Llama 3.2 Vision's chat template takes, with the model's own rules.

Llama 3.2 Vision sees at most one image per conversation and has no system prompt when an image
is present; both are client errors here, not template crashes. The image stays where the client
put it, so a follow-up question (user+image, assistant, user) keeps its image.

A message without an image reaches the template as its text (parts joined by newlines), the form the
template expects: it renders a list of parts only for the image's message, and a system message given
as a list would reach the model as the list's Python repr. The template trims a leading system message; it
is trimmed here already, so that the backend can substitute client text into the rendered template as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.errors import invalid_request
from inference.protocol import ImagePart, ImageURL, Message


@dataclass(frozen=True)
class Conversation:
    # chat-template form: {"role", "content": "text"}, or for the image's message
    # {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}
    messages: list[dict]
    image_url: ImageURL | None

    @property
    def text_length(self) -> int:
        return sum(
            len(message["content"])
            if isinstance(message["content"], str)
            else sum(len(part.get("text", "")) for part in message["content"])
            for message in self.messages
        )


def build_conversation(messages: list[Message]) -> Conversation:
    image_urls = [(index, url) for index, message in enumerate(messages) for url in message.images()]
    if len(image_urls) > 1:
        raise invalid_request(
            f"Llama 3.2 Vision accepts one image per conversation; this one has {len(image_urls)}",
            code="too_many_images",
            param="messages",
        )
    for index, message in enumerate(messages):
        if message.images() and message.role != "user":
            raise invalid_request("images may only appear in user messages", param=f"messages.{index}.content")
    has_system = any(message.role in ("system", "developer") for message in messages)
    if image_urls and has_system:
        raise invalid_request(
            "Llama 3.2 Vision cannot take a system message together with an image; "
            "put the instructions in the user message",
            code="system_with_image",
            param="messages",
        )
    if not any(message.role == "user" for message in messages):
        raise invalid_request("the conversation needs at least one user message", param="messages")
    return Conversation(
        messages=[_template_message(message, first=index == 0) for index, message in enumerate(messages)],
        image_url=image_urls[0][1] if image_urls else None,
    )


def _template_message(message: Message, first: bool) -> dict:
    role = "system" if message.role == "developer" else message.role
    if not message.images():
        text = "\n".join(message.texts())
        return {"role": role, "content": text.strip() if role == "system" and first else text}
    content = [
        {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
        for part in message.content
    ]
    return {"role": role, "content": content}
