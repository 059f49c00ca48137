"""The two ways mail leaves agentserver (`layers.shared.domain.mail.Mailer`):

- `SesMailer`: Amazon SES v2 `SendEmail` from the configured sender (AGENTSERVER_MAIL_SENDER);
  the deployment grants the API function `ses:SendEmail`.
- `OutboxMailer`: the embedded stack's outbox. Each message is stored in the identity table (kept a
  week) and printed to the stack's log, and admins read it in the console (Admin → Outbox,
  GET /api/admin/outbox). Nothing leaves the machine.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache

from botocore.exceptions import ClientError

from layers.shared.clock import utcnow
from layers.shared.dal.aws import client
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.domain.mail import Mailer, MailMessage, MailNotConfigured, MailNotSent
from layers.shared.domain.tokens import new_id
from layers.shared.settings import get_settings

OUTBOX_KEEP = timedelta(days=7)
# Its own logger, not the JSON one: the embedded stack's log shows the message as a reader would.
outbox_log = logging.getLogger("mail.outbox")
log = logging.getLogger("agentserver.mail")


class SesMailer:
    def __init__(self, sender: str) -> None:
        self.sender = sender

    def send(self, message: MailMessage) -> None:
        if not self.sender:
            raise MailNotConfigured()
        try:
            client("sesv2").send_email(
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [message.to]},
                Content={"Simple": {"Subject": {"Data": message.subject, "Charset": "UTF-8"},
                                    "Body": {"Text": {"Data": message.text, "Charset": "UTF-8"}}}},
            )
        except ClientError as error:  # e.g. SES's sandbox refusing an unverified recipient
            log.warning("SES refused a mail: %s", error.response.get("Error", {}).get("Code", "unknown"))
            raise MailNotSent() from None


class OutboxMailer:
    def __init__(self, store: DynamoIdentityStore) -> None:
        self.store = store

    def send(self, message: MailMessage) -> None:
        self.store.put_outbox(new_id("mail_"), message.to, message.subject, message.text, utcnow(), OUTBOX_KEEP)
        outbox_log.info("mail to %s: %s\n%s", message.to, message.subject, message.text)


@cache
def mailer() -> Mailer:
    settings = get_settings()
    if settings.mail_backend == "ses":
        return SesMailer(settings.mail_sender)
    return OutboxMailer(DynamoIdentityStore())
