#!/usr/bin/env python3
"""Signs and sends a request (RFC 9421, hmac-sha256, standard library only).
Usage: sign-request.py URL KEY_ID BASE64_SECRET [BODY]   e.g. against the demo:
  scripts/sign-request.py http://localhost:10000/webhooks/demo demo-partner "$SECRET" '{"hello":"world"}'"""
import base64, hashlib, hmac, os, sys, time, urllib.parse, urllib.request
url, key_id, secret, body = sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3]), (sys.argv[4:] or [""])[0].encode()
u, created, nonce = urllib.parse.urlsplit(url), int(time.time()), base64.urlsafe_b64encode(os.urandom(12)).decode()
digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
params = f'("@method" "@target-uri" "@authority" "content-digest");created={created};keyid="{key_id}";nonce="{nonce}"'
base = f'"@method": POST\n"@target-uri": {url}\n"@authority": {u.netloc.lower()}\n"content-digest": {digest}\n"@signature-params": {params}'
sig = base64.b64encode(hmac.new(secret, base.encode(), hashlib.sha256).digest()).decode()
headers = {"content-digest": digest, "signature-input": f"sig1={params}", "signature": f"sig1=:{sig}:", "content-type": "application/json"}
try: r = urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST")); print(r.status, r.read().decode())
except urllib.error.HTTPError as e: print(e.code, e.headers.get("www-authenticate"), e.read().decode())
