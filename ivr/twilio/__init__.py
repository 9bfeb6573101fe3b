"""The Twilio front-end: webhooks answered with TwiML, legs moved with the REST API."""
