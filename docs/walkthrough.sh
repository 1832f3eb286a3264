#!/usr/bin/env bash
# Every endpoint with curl, top to bottom, on a fresh database (tests/service/test_walkthrough.py
# runs it against a real server). Needs: ADMIN (an admin key from `facegate keys create`),
# PHOTOS (a folder with 7 or more photos of one person), API (default http://127.0.0.1:8000).
set -euo pipefail
API=${API:-http://127.0.0.1:8000}
H="X-API-Key: $ADMIN"
field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }  # read one field of a JSON answer
mapfile -t P < <(ls "$PHOTOS"/*.jpg | head -7)

# a door key: created (shown once), listed (never the key itself)
DOOR=$(curl -sf -H "$H" -X POST $API/v1/keys -H 'content-type: application/json' \
       -d '{"name": "front-door", "scope": "door", "expires_in_days": 365}' | field '["key"]')
curl -sf -H "$H" $API/v1/keys

# enrol: a name, optional JSON metadata, at least MIN_ENROL_FRAMES (5) usable frames
# -> 201 {"id": 1, "name": "Ada Lovelace", "frame_count": 5, "frames": [...], ...};
#    409 already_enrolled if the face matches someone enrolled
ID=$(curl -sf -H "$H" -F name="Ada Lovelace" -F metadata='{"badge": "A-17"}' \
     -F frames=@"${P[0]}" -F frames=@"${P[1]}" -F frames=@"${P[2]}" -F frames=@"${P[3]}" -F frames=@"${P[4]}" \
     $API/v1/persons | field '["id"]')

# identify (door key): 1..16 frames, optional door id. Granted:
# {"decision": "granted", "reason": "match", "person": {"id": 1, "name": "Ada Lovelace"}, "distance": 0.21,
#  "threshold": 0.30, "margin": null, "frames_used": 2, "frames": [...], ...}
# (margin: how much nearer than the next person, null with one person enrolled). Denied to a door
# key: "person", "distance" and "margin" are null, so a stranger learns nothing to climb on.
curl -sf -H "X-API-Key: $DOOR" -F door_id=front -F frames=@"${P[5]}" -F frames=@"${P[6]}" $API/v1/identify

# 1:1 verification against one person
curl -sf -H "X-API-Key: $DOOR" -F frames=@"${P[5]}" -F frames=@"${P[6]}" $API/v1/persons/$ID/verify

# face attributes (an analysis or admin key; a door key needs the door+analysis scope): per frame,
# expression probabilities and top class; gender and age only with GENDER_AGE_ENABLED=true.
# Nothing is matched or stored. The same on identify with -F attributes=expression.
curl -sf -H "$H" -F frames=@"${P[5]}" $API/v1/analyze

# people: list (substring filter), one, rename and re-tag (metadata replaced whole, never
# merged), add frames (template re-fused from all frames), the sample aligned face
curl -sf -H "$H" "$API/v1/persons?offset=0&limit=50&name=ada"
curl -sf -H "$H" $API/v1/persons/$ID
curl -sf -H "$H" -X PATCH $API/v1/persons/$ID -H 'content-type: application/json' \
     -d '{"name": "Ada King", "metadata": {"badge": "A-18"}}'
curl -sf -H "$H" -F frames=@"${P[5]}" -F frames=@"${P[6]}" $API/v1/persons/$ID/frames
curl -sf -H "$H" $API/v1/persons/$ID/sample -o /dev/null

# threshold: the model's own by default, one per number of frames fused, at FAR 0.1% per
# comparison. A security level (a FAR of the model's table) keeps one threshold per burst size;
# a raw distance applies to every burst size. Stored for every replica, audited, until DELETE.
curl -sf -H "$H" $API/v1/threshold
curl -sf -H "$H" -X PUT $API/v1/threshold -H 'content-type: application/json' -d '{"target_far": 0.0001}'
curl -sf -H "$H" -X PUT $API/v1/threshold -H 'content-type: application/json' -d '{"threshold": 0.2}'
curl -sf -H "$H" -X DELETE $API/v1/threshold
curl -sf -H "$H" "$API/v1/threshold/distributions?sample=100"
curl -sf -H "$H" -X POST $API/v1/threshold/calibrate -H 'content-type: application/json' -d '{"method": "target_far", "target_far": 0.001}'

# audit log, newest first, with filters
curl -sf -H "$H" "$API/v1/events?door_id=front&limit=20"

# confirm-by-face deletion: who is this burst? -> a one-time token -> delete that person only
TOKEN=$(curl -sf -H "$H" -F frames=@"${P[0]}" -F frames=@"${P[1]}" $API/v1/deletion-requests | field '["token"]')
curl -sf -H "$H" -X POST $API/v1/deletion-requests/confirm -H 'content-type: application/json' -d "{\"token\": \"$TOKEN\"}"

# enrol again, then delete by id (templates, frames and sample go; audit events keep the id)
ID=$(curl -sf -H "$H" -F name="Ada Lovelace" \
     -F frames=@"${P[0]}" -F frames=@"${P[1]}" -F frames=@"${P[2]}" -F frames=@"${P[3]}" -F frames=@"${P[4]}" \
     $API/v1/persons | field '["id"]')
curl -sf -H "$H" -X DELETE $API/v1/persons/$ID

# revoke the door key (its id is in the list), then operations (no key needed)
DOOR_ID=$(curl -sf -H "$H" $API/v1/keys | field '["data"][-1]["id"]')
curl -sf -H "$H" -X DELETE $API/v1/keys/$DOOR_ID
curl -sf $API/healthz; curl -sf $API/readyz; curl -sf $API/metrics -o /dev/null
