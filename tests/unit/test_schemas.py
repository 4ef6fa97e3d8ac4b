import pytest
from pydantic import ValidationError

from serve_app.schemas import SignupIn


@pytest.mark.parametrize(
    "email", ["user@@example.com", "user@example..com", "user@example", "@example.com", "a b@x.io"]
)
def test_malformed_emails_are_refused(email):
    with pytest.raises(ValidationError):
        SignupIn(email=email, password="long enough")
