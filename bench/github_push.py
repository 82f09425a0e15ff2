"""A GitHub ``push`` event for the ingress benchmark: deterministic, realistic, 6-7 KB.

The shape follows GitHub's push payload (repository with its owner and URL templates,
pusher, sender, commits and ``head_commit``); every value is fixed, so every run sends the
same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

OWNER, REPO_NAME = "acme", "hooks"  # short names, as many real repositories have


def _user(login: str, uid: int, kind: str = "User") -> dict[str, Any]:
    """A user as a push event's ``repository.owner`` has it (``sender`` has no name/email)."""
    api = f"https://api.github.com/users/{login}"
    return {
        "name": login, "email": f"{uid}+{login}@users.noreply.github.com", "login": login,
        "id": uid, "node_id": f"MDQ6VXNlcj{uid}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4", "gravatar_id": "",
        "url": api, "html_url": f"https://github.com/{login}",
        "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events", "type": kind,
        "user_view_type": "public", "site_admin": False,
    }


def _repository(owner: dict[str, Any]) -> dict[str, Any]:
    full = f"{OWNER}/{REPO_NAME}"
    api = f"https://api.github.com/repos/{full}"
    templated = {
        "keys": "{/key_id}", "collaborators": "{/collaborator}", "issue_events": "{/number}",
        "assignees": "{/user}", "branches": "{/branch}", "blobs": "{/sha}",
        "git_tags": "{/sha}", "git_refs": "{/sha}", "trees": "{/sha}", "statuses": "/{sha}",
        "commits": "{/sha}", "git_commits": "{/sha}", "comments": "{/number}",
        "issue_comment": "{/number}", "contents": "/{+path}", "compare": "/{base}...{head}",
        "archive": "/{archive_format}{/ref}", "issues": "{/number}", "pulls": "{/number}",
        "milestones": "{/number}", "notifications": "{?since,all,participating}",
        "labels": "{/name}", "releases": "{/id}",
    }
    plain = ("forks", "teams", "hooks", "events", "tags", "languages", "stargazers",
             "contributors", "subscribers", "subscription", "merges", "downloads", "deployments")
    repo: dict[str, Any] = {
        "id": 35129377, "node_id": "MDEwOlJlcG9zaXRvcnkzNTEyOTM3Nw==", "name": REPO_NAME,
        "full_name": full, "private": False, "owner": owner,
        "html_url": f"https://github.com/{full}", "description": "A repository for benchmarks",
        "fork": False, "url": api,
    }
    repo.update({f"{name}_url": f"{api}/{name}" for name in plain})
    repo.update({f"{name}_url": f"{api}/{name}{suffix}" for name, suffix in templated.items()})
    repo.update({
        "created_at": 1430869212, "updated_at": "2024-05-01T12:00:00Z", "pushed_at": 1714565000,
        "git_url": f"git://github.com/{full}.git", "ssh_url": f"git@github.com:{full}.git",
        "clone_url": f"https://github.com/{full}.git", "svn_url": f"https://github.com/{full}",
        "homepage": None, "size": 1204, "stargazers_count": 42, "watchers_count": 42,
        "language": "Python", "has_issues": True, "has_projects": True, "has_downloads": True,
        "has_wiki": False, "has_pages": False, "has_discussions": False, "forks_count": 3,
        "mirror_url": None, "archived": False, "disabled": False, "open_issues_count": 5,
        "license": None, "allow_forking": True, "is_template": False,
        "web_commit_signoff_required": False, "topics": ["webhooks", "benchmark"],
        "visibility": "public", "forks": 3, "open_issues": 5, "watchers": 42,
        "default_branch": "main", "stargazers": 42, "master_branch": "main",
        "organization": OWNER,
    })
    return repo


def _commit(index: int, pusher: dict[str, Any]) -> dict[str, Any]:
    sha = hashlib.sha1(f"commit-{index}".encode()).hexdigest()
    person = {"name": "Mona Octocat", "email": pusher["email"], "username": pusher["login"]}
    return {
        "id": sha, "tree_id": hashlib.sha1(f"tree-{index}".encode()).hexdigest(),
        "distinct": True,
        "message": f"Tighten the ingress checks, part {index}",
        "timestamp": f"2024-05-01T12:0{index % 10}:00+02:00",
        "url": f"https://github.com/{OWNER}/{REPO_NAME}/commit/{sha}",
        "author": person, "committer": person,
        "added": [f"docs/change-{index}.md"], "removed": [],
        "modified": ["palyra_py/inbound/ingress.py", f"tests/test_change_{index}.py"],
    }


def github_push_payload(min_bytes: int = 6144, max_bytes: int = 7168) -> bytes:
    """A realistic GitHub ``push`` event, compact JSON like GitHub's, deterministic, between
    ``min_bytes`` and ``max_bytes`` long (commits are added until it is long enough)."""
    pusher = _user("mona", 583231)
    for count in range(1, 20):
        commits = [_commit(i, pusher) for i in range(1, count + 1)]
        after = commits[-1]["id"]
        event = {
            "ref": "refs/heads/main",
            "before": hashlib.sha1(b"before").hexdigest(),
            "after": after,
            "repository": _repository(_user(OWNER, 6811672, "Organization")),
            "pusher": {"name": pusher["login"], "email": pusher["email"]},
            "sender": {k: v for k, v in pusher.items() if k not in ("name", "email")},
            "created": False, "deleted": False, "forced": False,
            "base_ref": None,
            "compare": f"https://github.com/{OWNER}/{REPO_NAME}/compare/0d1a26e67d8f...{after[:12]}",
            "commits": commits, "head_commit": commits[-1],
        }
        body = json.dumps(event, separators=(",", ":")).encode()
        if len(body) >= min_bytes:
            if len(body) > max_bytes:
                raise ValueError(f"payload is {len(body)} bytes, over {max_bytes}")
            return body
    raise ValueError("payload never reached the wanted size")


def github_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
