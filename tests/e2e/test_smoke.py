from tests.e2e.helpers import bearer, signup


async def test_signup_then_me_shows_twenty_credits(client):
    body = await signup(client)
    me = await client.get("/v1/auth/me", headers=bearer(body["accessToken"]))
    assert me.status_code == 200, me.text
    assert me.json()["credits"] == 20
