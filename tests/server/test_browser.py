"""kvcache-server's web UI in headless Chromium (selenium + chromedriver): send a message, wait for the streamed
answer, select a passage of it and branch from it, focus on a passage of the branch, continue from the first
answer; check the tree, the slots panel and the server's slots, and save a screenshot (--screenshot;
docs/images/server-ui.png in the repository was made by this test)."""
import os
import shutil
import tempfile

from harness import SKIP, Server, parse_args, run_tests

args = parse_args(lambda p: p.add_argument("--screenshot", default=os.path.join(tempfile.gettempdir(),
                                                                                 "kvcache-server-ui.png")))
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    print("SKIP: selenium is not installed (bash scripts/install-python-deps.sh)")
    raise SystemExit(SKIP)
chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
chromedriver = shutil.which("chromedriver")
if not chromium or not chromedriver:
    print("SKIP: chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
    raise SystemExit(SKIP)

server = Server(args, "--slots", 4, "--ctx", 512)
options = Options()
options.binary_location = chromium
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,860"]:
    options.add_argument(a)
driver = webdriver.Chrome(service=Service(chromedriver), options=options)
driver.set_script_timeout(30)


def answers_done():
    return driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant.done")


def test_send_stream_branch_screenshot():
    driver.get(server.url + "/")
    WebDriverWait(driver, 30).until(lambda d: "SmolLM2" in d.find_element(By.ID, "model-name").text)
    driver.execute_script("document.getElementById('p-max-tokens').value = 40")
    box = driver.find_element(By.ID, "prompt")
    box.send_keys("What is a KV cache in a transformer? Answer briefly.")
    driver.find_element(By.ID, "send").click()
    # streaming: the answer grows while the message has the "streaming" class, then it is done
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant.streaming"))
    WebDriverWait(driver, 120).until(lambda d: len(answers_done()) == 1)
    answer = answers_done()[0].find_element(By.CSS_SELECTOR, ".content").text
    assert answer and "[error]" not in answer, answer
    # select a passage of the answer (the middle words) as a user would with the mouse
    excerpt = driver.execute_script("""
        const el = document.querySelector('#messages .message.assistant.done .content');
        const text = el.firstChild.textContent;
        const words = text.split(' ');
        const first = Math.floor(words.length / 3);
        const start = words.slice(0, first).join(' ').length + (first > 0 ? 1 : 0);
        const end = start + words.slice(first, first + 4).join(' ').length;
        const range = document.createRange();
        range.setStart(el.firstChild, start);
        range.setEnd(el.firstChild, end);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        document.getElementById('messages').dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));
        return sel.toString();""")
    popup = driver.find_element(By.ID, "selection-popup")
    WebDriverWait(driver, 10).until(lambda d: "hidden" not in popup.get_attribute("class"))
    driver.find_element(By.ID, "popup-prompt").send_keys("Can you say more about this?")
    driver.find_element(By.ID, "popup-branch").click()
    WebDriverWait(driver, 120).until(lambda d: len(answers_done()) == 2)
    texts = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#messages .message")]
    assert len(texts) == 4 and "branch" in texts[2] and excerpt.strip()[:10] in texts[2], texts
    # the tree shows both turns, the slots panel both slots; the server agrees: slot 1 is a branch of slot 0
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree .node")) == 4
    slots = {s["id"]: s for s in server.slots()}
    assert len(slots) == 2, slots
    branch = [s for s in slots.values() if s["parent"] is not None]
    assert len(branch) == 1 and branch[0]["parent"] in slots and branch[0]["last_reused_tokens"] > 0, slots
    # focus: a passage of the branch's answer (the newest answer of its slot), asked about in the same slot
    select_words_of_last_answer = """
        const all = document.querySelectorAll('#messages .message.assistant.done .content');
        const el = all[all.length - 1];
        const text = el.firstChild.textContent;
        const words = text.split(' ');
        const end = words.slice(0, 3).join(' ').length;
        const range = document.createRange();
        range.setStart(el.firstChild, 0);
        range.setEnd(el.firstChild, end);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        document.getElementById('messages').dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));"""
    driver.execute_script(select_words_of_last_answer)
    WebDriverWait(driver, 10).until(lambda d: "hidden" not in popup.get_attribute("class"))
    driver.find_element(By.ID, "popup-prompt").send_keys("Why?")
    driver.find_element(By.ID, "popup-focus").click()
    WebDriverWait(driver, 120).until(lambda d: len(answers_done()) == 3)
    assert "focus" in driver.find_elements(By.CSS_SELECTOR, "#messages .message.user")[-1].text
    assert len(server.slots()) == 2, "focus continues in the same slot"
    # continue from the first answer: its slot (never continued so far) goes on in place
    driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant .continue-here")[0].click()
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .message")) == 2)
    box = driver.find_element(By.ID, "prompt")
    box.send_keys("Give one example.")
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 120).until(lambda d: len(answers_done()) == 2 and
                                     len(d.find_elements(By.CSS_SELECTOR, "#messages .message")) == 4)
    slots = {s["id"]: s for s in server.slots()}
    assert len(slots) == 2 and slots[branch[0]["parent"]]["messages"] == 4, slots
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree .node")) == 8
    driver.execute_script("refreshSlots()")
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#slots tbody tr")) == 2)
    # show the branch and the focus again for the screenshot (tree order: question, answer, branch question,
    # its answer, focus question, its answer, ...)
    driver.find_elements(By.CSS_SELECTOR, "#tree .node")[5].click()
    WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .message")) == 6)
    # a screenshot without the selection highlight
    driver.execute_script("window.getSelection().removeAllRanges()")
    os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
    assert driver.save_screenshot(args.screenshot)
    print(f"  screenshot: {args.screenshot}")


try:
    try:
        run_tests([test_send_stream_branch_screenshot])
    except SystemExit as e:
        if e.code:
            driver.save_screenshot(args.screenshot + ".failed.png")
            print("  page at the failure:", args.screenshot + ".failed.png")
        raise
finally:
    driver.quit()
    server.stop()
