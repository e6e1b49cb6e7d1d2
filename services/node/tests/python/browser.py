"""The web chat and the ops console in a real browser (headless Chromium, driven by selenium
through Debian's chromedriver), against a running `mesh up`: two browser sessions of one
business line chat (pushes, read receipts, sync after reconnect, an order placed by a Python
checkout appearing as a system message and in the order panel); the console switches
recommend off for mall, and mall's chat shows its suggestions degraded while a paipai chat
does not. Screenshots of each page go to the folder given.

Run by services/node/tests/node/browser.rs, which starts the mesh and passes everything as JSON:

    python browser.py '{"web": "127.0.0.1:7480", "tokens": {...}, "ops": "...", ...}'
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ARGS = json.loads(sys.argv[1])
WEB = f"http://{ARGS['web']}"
SHOTS = ARGS["screenshots"]
WAIT = 30  # seconds any one thing may take to show (a cold Chromium is slow to start)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = ARGS.get("chromium", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,820"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(ARGS.get("chromedriver", "/usr/bin/chromedriver")), options=options
    )
    driver.set_page_load_timeout(2 * WAIT)
    return driver


def until(driver, what, condition):
    """Waits for `condition`; an element the page replaced while it was read (the console
    re-renders its lists every few seconds) is read again at the next poll."""
    try:
        return WebDriverWait(
            driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda d: condition(d))
    except TimeoutException:
        logs = "\n".join(str(entry) for entry in driver.get_log("browser"))
        raise AssertionError(f"{what}: not within {WAIT} s\nbrowser console:\n{logs}") from None


def click_rendered(driver, what, selector):
    """Clicks the element `selector` finds in a part the page re-renders on its own (the
    console refreshes its lists): found again if it was replaced between finding and clicking."""
    def clicked(d):
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except StaleElementReferenceException:
            return False
    until(driver, what, clicked)


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def chat(tenant, user, peer, conversation):
    driver = browser()
    token = ARGS["tokens"][f"{user}@{tenant}"]
    driver.get(f"{WEB}/chat#tenant={tenant}&user={user}&token={token}&peer={peer}"
               f"&conversation={conversation}")
    until(driver, f"{user}@{tenant} online", lambda d: text(d, "connection") == "online")
    # the token does not stay in the address (nor in the history)
    assert "token" not in driver.current_url, driver.current_url
    return driver


def bodies(driver, kind="message"):
    """The messages shown of `kind`, without the ones still on their way (pending)."""
    return [
        li.find_element(By.CLASS_NAME, "body").text
        for li in driver.find_elements(By.CSS_SELECTOR, f"#messages li.{kind}:not(.pending)")
    ]


def admin(method, body):
    """An admin.v1 call over the web access with the ops credential, as the console makes."""
    request = urllib.request.Request(
        f"{WEB}/admin/v1/{method}", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {ARGS['ops']}"},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        return json.load(answer)


def composer_keeps_every_word(alice, bob):
    """The composer: a double click sends once; Shift+Enter is a new line; with every send
    taking 800 ms, what is typed meanwhile stays in the box and the messages go out once each,
    in the order written."""
    box = alice.find_element(By.ID, "body")
    box.send_keys("Only once, however I click")
    ActionChains(alice).double_click(alice.find_element(By.ID, "send")).perform()
    until(bob, "the double-clicked message", lambda d: "Only once, however I click" in bodies(d, "theirs"))
    time.sleep(1)  # a second copy would have arrived by now
    assert bodies(alice, "mine").count("Only once, however I click") == 1, bodies(alice, "mine")
    assert bodies(bob, "theirs").count("Only once, however I click") == 1, bodies(bob, "theirs")

    box.send_keys("line one")
    ActionChains(alice).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    box.send_keys("line two", Keys.ENTER)
    until(bob, "a message of two lines", lambda d: "line one\nline two" in bodies(d, "theirs"))

    admin("SetFault", {"tenant": "mall", "service": "message", "delayMs": 800})
    try:
        box.send_keys("first while slow", Keys.ENTER)
        box.send_keys("second while slow", Keys.ENTER)
        box.send_keys("still typing")
        until(alice, "both slow sends stored",
              lambda d: {"first while slow", "second while slow"} <= set(bodies(d, "mine")))
        assert box.get_attribute("value") == "still typing", box.get_attribute("value")
        mine = bodies(alice, "mine")
        assert mine.index("first while slow") < mine.index("second while slow"), mine
        until(bob, "both slow sends pushed",
              lambda d: {"first while slow", "second while slow"} <= set(bodies(d, "theirs")))
        theirs = bodies(bob, "theirs")
        assert theirs.count("first while slow") == theirs.count("second while slow") == 1, theirs
        assert theirs.index("first while slow") < theirs.index("second while slow"), theirs

        # a reload while a send is on its way: sent after it, once
        box.clear()
        box.send_keys("sent across a reload", Keys.ENTER)
        alice.refresh()
        until(alice, "alice online after the reload", lambda d: text(d, "connection") == "online")
        until(bob, "the message sent across the reload",
              lambda d: "sent across a reload" in bodies(d, "theirs"))
        time.sleep(1.5)  # a second copy would have arrived by now
        assert bodies(bob, "theirs").count("sent across a reload") == 1, bodies(bob, "theirs")
        box = alice.find_element(By.ID, "body")
    finally:
        admin("SetFault", {"tenant": "mall", "service": "message", "delayMs": 0})
    box.clear()


def hidden_tab_sends_no_receipt(alice, bob):
    """bob looks at another tab: alice's message reaches his chat but is not marked read
    until he looks at the chat again."""
    chat_tab = bob.current_window_handle
    bob.switch_to.new_window("tab")
    bob.get("about:blank")
    send(alice, "Read this when you are back")
    time.sleep(2)  # a receipt would have come back by now
    assert state_of(alice, "Read this when you are back") == "sent", \
        state_of(alice, "Read this when you are back")
    bob.close()
    bob.switch_to.window(chat_tab)
    assert "Read this when you are back" in bodies(bob, "theirs")
    until(alice, "read once bob looks",
          lambda d: state_of(d, "Read this when you are back") == "read")


def fill(driver, **fields):
    """Sets the console's switch form: each field given (switch-<name>) typed afresh."""
    for name, value in fields.items():
        box = driver.find_element(By.ID, f"switch-{name}")
        box.clear()
        box.send_keys(value)


def console_asks_before_a_wide_switch(console):
    """A tier and a service at once is refused (never one silently preferred); tier 0 for
    every tenant waits for a confirmation naming what it reaches, and Cancel switches nothing."""
    fill(console, tenant="mall", service="order", tier="2", reason="ambiguous")
    console.find_element(By.ID, "switch-off").click()
    until(console, "tier and service refused", lambda d: "not both" in text(d, "switch-result"))
    fill(console, tenant="", service="", method="", tier="0", reason="drill everything")
    console.find_element(By.ID, "switch-off").click()
    until(console, "the confirmation", lambda d: d.find_element(By.ID, "switch-confirm").is_displayed())
    asked = text(console, "switch-confirm-text")
    for said in ("every service, the core (tier 0) included", "every tenant", "mall", "paipai", "calls/s"):
        assert said in asked, asked
    console.find_element(By.ID, "switch-confirm-no").click()
    until(console, "cancelled", lambda d: "cancelled" in text(d, "switch-result"))
    time.sleep(1)  # a switch applied anyway would be listed by now
    assert "tier>=" not in text(console, "switches"), text(console, "switches")
    assert "tier>=" not in text(console, "switch-history"), text(console, "switch-history")
    fill(console, tenant="", service="", method="", tier="", reason="")


def app_on_another_origin(driver):
    """A page served from another origin (a port of its own) calls the mesh with fetch: as
    mall, whose file allows that origin, it reads the answer and its headers; as paipai, whose
    file allows none, the browser is refused."""
    port = ARGS["app_port"]
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "index.html"), "w") as page:
            page.write("<!doctype html><title>another app</title><p>an app elsewhere</p>")
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + WAIT
            while True:  # until the app's server listens
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"the app's server did not listen on {port}"
                    time.sleep(0.1)
            driver.get(f"http://127.0.0.1:{port}/")
            assert "another app" in driver.title, driver.title

            def call_as(tenant, user):
                return driver.execute_async_script(
                    """const [web, tenant, token, user, done] = arguments;
                    fetch(web + "/order/v1/ListOrders", {
                      method: "POST",
                      headers: { "content-type": "application/json", "x-mesh-tenant": tenant,
                                 authorization: "Bearer " + token },
                      body: JSON.stringify({ userId: user, limit: 1 }),
                    }).then(async (r) => done({ status: r.status, id: r.headers.get("x-mesh-request-id"),
                                               body: await r.text() }))
                      .catch((e) => done({ error: String(e) }));""",
                    WEB, tenant, ARGS["tokens"][f"{user}@{tenant}"], user,
                )

            mall = call_as("mall", "alice")
            assert mall.get("status") == 200, mall
            assert "orders" in mall["body"], mall
            paipai = call_as("paipai", "carol")
            assert "error" in paipai, f"paipai allows no other origin, yet the page read {paipai}"
        finally:
            server.terminate()
            server.wait(timeout=10)


def long_word_at_phone_width(alice):
    """A 4000-character word at a phone's width wraps in its bubble: the page does not
    widen and Send stays on screen."""
    alice.set_window_size(390, 844)
    try:
        word = "w" * 4000
        box = alice.find_element(By.ID, "body")
        # pasted rather than typed key by key (4000 key events are slow to drive)
        alice.execute_script("arguments[0].value = arguments[1]", box, word)
        box.send_keys(Keys.ENTER)
        until(alice, "the long word sent", lambda d: word in bodies(d, "mine"))
        width = alice.execute_script("return document.documentElement.scrollWidth")
        viewport = alice.execute_script("return window.innerWidth")
        assert width <= viewport, f"the page is {width} px wide at {viewport}"
        right = alice.execute_script(
            "return document.getElementById('send').getBoundingClientRect().right")
        assert right <= viewport, f"Send ends at {right} px of {viewport}"
        shot(alice, "chat-phone")
    finally:
        alice.set_window_size(1200, 820)


def send(driver, body):
    box = driver.find_element(By.ID, "body")
    box.send_keys(body)
    driver.find_element(By.ID, "send").click()
    until(driver, f"{body!r} shown as sent", lambda d: body in bodies(d, "mine"))


def state_of(driver, body):
    for li in driver.find_elements(By.CSS_SELECTOR, "#messages li.mine"):
        if li.find_element(By.CLASS_NAME, "body").text == body:
            return li.find_element(By.CLASS_NAME, "state").text
    return None


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def main():
    drivers = []
    try:
        # a token the mesh refuses: back at the sign-in form, saying why
        stranger = browser()
        drivers.append(stranger)
        stranger.get(f"{WEB}/chat#tenant=mall&user=alice&token=not-a-token&peer=bob")
        until(stranger, "the refusal shown",
              lambda d: "UNAUTHENTICATED" in text(d, "sign-in-error"))
        assert stranger.find_element(By.ID, "sign-in").is_displayed()
        assert not stranger.find_element(By.ID, "chat").is_displayed()
        app_on_another_origin(stranger)

        conversation = ARGS["conversation"]
        alice = chat("mall", "alice", "bob", conversation)
        drivers.append(alice)
        bob = chat("mall", "bob", "alice", conversation)
        drivers.append(bob)

        # live pushes both ways; markup typed by a user is shown as text
        send(alice, "Hello, is my <b>order</b> on its way?")
        until(bob, "bob sees alice's message",
              lambda d: "Hello, is my <b>order</b> on its way?" in bodies(d, "theirs"))
        assert not bob.find_elements(By.CSS_SELECTOR, "#messages b"), "markup was rendered"
        send(bob, "Let me check that for you.")
        until(alice, "alice sees bob's answer",
              lambda d: "Let me check that for you." in bodies(d, "theirs"))
        # bob's page read alice's message as it showed it: alice sees the receipt
        until(alice, "read receipt", lambda d: state_of(d, "Hello, is my <b>order</b> on its way?") == "read")

        composer_keeps_every_word(alice, bob)
        hidden_tab_sends_no_receipt(alice, bob)
        long_word_at_phone_width(alice)
        # a reload keeps the sign-in (kept for the tab, never in the address) and shows the
        # conversation's history, both sides, in order, with nothing left to sync
        bob.refresh()
        until(bob, "bob online after a reload", lambda d: text(d, "connection") == "online")
        assert "token" not in bob.current_url, bob.current_url
        until(bob, "the history after a reload",
              lambda d: "Hello, is my <b>order</b> on its way?" in bodies(d, "theirs")
              and "Let me check that for you." in bodies(d, "mine"))
        theirs = bodies(bob, "theirs")
        assert theirs.index("Hello, is my <b>order</b> on its way?") < theirs.index("first while slow"), theirs
        assert theirs.count("Only once, however I click") == 1, theirs

        # bob goes offline; what alice sends meanwhile reaches him by sync once he is back
        bob.find_element(By.ID, "toggle-online").click()
        until(bob, "bob offline", lambda d: text(d, "connection") == "offline")
        send(alice, "Sent while you were away")
        time.sleep(0.5)
        assert "Sent while you were away" not in bodies(bob, "theirs"), "pushed while offline"
        bob.find_element(By.ID, "toggle-online").click()
        until(bob, "bob synced after reconnecting",
              lambda d: "Sent while you were away" in bodies(d, "theirs"))

        # a checkout written in Python publishes an order event: a system message in the
        # conversation, and the order in alice's order panel
        order = ARGS["order"]
        subprocess.run(
            [sys.executable, ARGS["publisher"], "--amqp", ARGS["amqp"], "--tenant", "mall",
             "--order", order, "--user", "alice", "--conversation", conversation,
             "--total-cents", "4999", "--currency", "EUR"],
            env={**os.environ, "PYTHONPATH": ARGS["stubs"]}, check=True,
        )
        until(alice, "the order's system message",
              lambda d: any(order in b for b in bodies(d, "system")))
        until(alice, "the order panel", lambda d: order in text(d, "orders"))
        # the checkout left the status out: a created order reads as placed, not "unspecified"
        assert "placed" in text(alice, "orders") and "unspecified" not in text(alice, "orders"), \
            text(alice, "orders")

        # suggestions are live for both business lines before the drill
        carol = chat("paipai", "carol", "dave", "desk-1")
        drivers.append(carol)
        # paipai runs order v2: its panel reads that major (no orders yet, no error)
        until(carol, "paipai's order panel", lambda d: text(d, "orders") == "no orders")
        for driver, who in ((alice, "mall"), (carol, "paipai")):
            until(driver, f"{who} suggestions live", lambda d: text(d, "recommend-state") == "live")
            until(driver, f"{who} suggestions listed",
                  lambda d: len(d.find_elements(By.CSS_SELECTOR, "#suggestions li")) > 0)

        # the console: sign in with the ops credential, switch recommend off for mall
        console = browser()
        drivers.append(console)
        console.get(f"{WEB}/console")
        console.find_element(By.ID, "ops-token").send_keys(ARGS["ops"])
        console.find_element(By.ID, "sign-in-button").click()
        until(console, "console open", lambda d: text(d, "connection") == "connected")
        until(console, "processes listed", lambda d: "shared" in text(d, "processes"))
        until(console, "tenants listed", lambda d: "paipai" in text(d, "tenants"))
        console_asks_before_a_wide_switch(console)
        console.find_element(By.ID, "switch-tenant").send_keys("mall")
        console.find_element(By.ID, "switch-service").send_keys("recommend")
        console.find_element(By.ID, "switch-reason").send_keys("browser drill")
        console.find_element(By.ID, "switch-off").click()
        until(console, "the switch listed", lambda d: "recommend@mall" in text(d, "switches"))
        assert "browser drill" in text(console, "switches")
        # and the change is in the console's audit log, with who made it (the shared
        # credential reads as `ops`) and the state before and after
        until(console, "the change audited",
              lambda d: "switch.off" in text(d, "audit") and "recommend@mall" in text(d, "audit"))
        assert "ops" in text(console, "audit")

        # mall's chat shows suggestions degraded; paipai's stays live; the chat itself works
        until(alice, "mall degraded", lambda d: text(d, "recommend-state") == "degraded")
        assert "recommend@mall" in text(alice, "recommend-degraded")
        send(alice, "Still here during the drill")
        until(bob, "chat during the drill",
              lambda d: "Still here during the drill" in bodies(d, "theirs"))
        time.sleep(5.5)  # a refresh of paipai's suggestions after the switch
        assert text(carol, "recommend-state") == "live", text(carol, "recommend-state")
        # the console saw mall's degraded answers
        until(console, "degraded answers listed", lambda d: "recommend@mall" in text(d, "degraded"))

        shot(alice, "chat-mall-customer-degraded")
        shot(bob, "chat-mall-agent")
        shot(carol, "chat-paipai-live")
        # onboarding from the console: a bad file is refused naming the field, a good one is
        # checked, added and served without a restart
        new = ARGS["new_tenant"]
        console.find_element(By.ID, "tenant-file-name").send_keys(f"{new}.toml")
        content = console.find_element(By.ID, "tenant-file-content")
        content.send_keys(f'id = "{new}"\ndisplay_name = "Web shop"\ndata_namespace = "{new}"\n'
                          '[credentials]\ntoken = "web-shop-token"\n[limits]\nrequests_per_second = -1\n')
        console.find_element(By.ID, "tenant-check").click()
        until(console, "the bad file refused", lambda d: "requests_per_second" in text(d, "tenant-result"))
        content.clear()
        content.send_keys(f'id = "{new}"\ndisplay_name = "Web shop"\ndata_namespace = "{new}"\n'
                          '[credentials]\ntoken = "web-shop-token"\n')
        console.find_element(By.ID, "tenant-check").click()
        until(console, "the file checked", lambda d: f"valid: tenant {new}" in text(d, "tenant-result"))
        console.find_element(By.ID, "tenant-add").click()
        until(console, "the tenant added", lambda d: "added" in text(d, "tenant-result"))
        until(console, "the tenant served",
              lambda d: any(new in row.text and "serving" in row.text
                            for row in d.find_elements(By.CSS_SELECTOR, "#tenants tbody tr")))
        # its consumer queues are listed with the others'
        until(console, "dead letter queues", lambda d: f"mesh.{new}.message.v1.storage" in text(d, "dead-letters"))
        console.set_window_size(1200, 2300)  # the whole console, status and tenants too
        shot(console, "console")

        # the busiest methods over the last minutes, as small charts: mall's sends are there
        until(console, "the traffic charts",
              lambda d: any("mall message.v1.Message.Send" in row.text or "mall message" in row.text
                            for row in d.find_elements(By.CSS_SELECTOR, "#traffic tbody tr")))
        assert console.find_elements(By.CSS_SELECTOR, "#traffic svg.spark polyline"), "no chart drawn"

        # at a phone's width the console keeps the screen's width (its tables scroll inside)
        console.set_window_size(390, 844)
        width = console.execute_script("return document.documentElement.scrollWidth")
        viewport = console.execute_script("return window.innerWidth")
        assert width <= viewport, f"the console is {width} px wide at {viewport}"
        console.set_window_size(1200, 820)
        # a keyboard user's focus survives the refresh that re-renders the switches
        console.execute_script("document.querySelector('#switches tbody button').focus()")
        time.sleep(3.5)  # one refresh (every 3 s) re-rendered the rows meanwhile
        focused = console.execute_script(
            "const a = document.activeElement; return a.closest('#switches') ? a.textContent : a.tagName")
        assert focused == "Switch on", focused

        # and back on from the console: mall's suggestions return
        click_rendered(console, "the switch's button", "#switches button")
        until(console, "the switch gone", lambda d: "recommend@mall" not in text(d, "switches"))
        # and its history stays: switched off, then on, by whom and why
        until(console, "the switch's history",
              lambda d: sum("recommend@mall" in row.text
                            for row in d.find_elements(By.CSS_SELECTOR, "#switch-history tbody tr")) == 2)
        assert "browser drill" in text(console, "switch-history"), text(console, "switch-history")
        until(alice, "mall live again", lambda d: text(d, "recommend-state") == "live")
        print("browser: every check passed")
    finally:
        for driver in drivers:
            driver.quit()


if __name__ == "__main__":
    main()
